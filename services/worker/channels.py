"""Client channels to the control plane (scheduler, registry)."""

from __future__ import annotations

import grpc

from services.common.grpc_client import open_channel
from services.common.internal_security import InternalSecurity
from services.common.request_id import request_id_client_interceptors

__all__ = ["open_control_channel"]


def open_control_channel(
    address: str, max_reconnect_backoff: float, *, security: InternalSecurity | None = None
) -> grpc.aio.Channel:
    """The shared channel options plus a capped reconnect backoff; calls made while serving a
    request (a lease release, a blob fetch for a Load) carry its `x-request-id`.

    gRPC's default reconnect backoff grows to 120 s, so a worker would take up to two minutes
    to notice that a restarted scheduler is back; capping it matches WORKER_RETRY_MAX_BACKOFF.
    """
    backoff_ms = max(100, int(max_reconnect_backoff * 1000))
    options: list[tuple[str, int | str]] = [
        ("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(1000, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]
    return open_channel(
        address,
        interceptors=request_id_client_interceptors(),
        security=security,
        options=options,
    )
