"""Readiness polling against the standard gRPC health service (never a bare sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_client import open_channel
from services.common.internal_security import InternalSecurity

__all__ = ["NotServing", "wait_until_serving"]

_POLL_INTERVAL = 0.05


class NotServing(RuntimeError):
    """The service did not report SERVING in time, or its process went away first."""


async def wait_until_serving(
    address: str,
    *,
    timeout: float,
    service: str = "",
    gone: Callable[[], str | None] = lambda: None,
    security: InternalSecurity | None = None,
) -> None:
    """Poll Health.Check until SERVING.

    `gone` is asked between polls; a non-None answer (e.g. "process exited with 1") aborts at once,
    so a service that crashes on start fails fast instead of after the whole timeout. `security`:
    the services' mutual TLS, when they use it (health checks need no token).
    """
    deadline = time.monotonic() + timeout
    async with open_channel(address, security=security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            reason = gone()
            if reason is not None:
                raise NotServing(f"{address}: {reason}")
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise NotServing(f"{address} did not report SERVING within {timeout:.0f}s")
            await asyncio.sleep(_POLL_INTERVAL)
