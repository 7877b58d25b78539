"""The one way every service runs its grpc.aio server.

Each server gets the standard health service (so readiness is polled, never slept on), server
reflection (so `grpcurl` works) and the request-id interceptor first in its chain (so handlers
log, and call out, under the caller's `x-request-id`). Shutdown on SIGTERM/SIGINT: health flips
to NOT_SERVING, the server stops accepting calls and gives in-flight ones `grace` seconds, then
the service's own cleanup runs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.internal_security import InternalSecurity
from services.common.request_id import RequestIdServerInterceptor

__all__ = ["GrpcServer", "channel_options", "run_until_signalled", "server_options"]

_log = logging.getLogger(__name__)

# Inference bodies and blob chunks stay far below this; it bounds what a peer can make us buffer.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_KEEPALIVE_MS = 20_000


def channel_options() -> list[tuple[str, int]]:
    """Options for client channels: bounded messages, keepalive pings to notice dead peers."""
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options() -> list[tuple[str, int]]:
    """Server options that accept the clients' keepalive pings.

    Without these the server's default minimum ping interval (5 minutes) answers idle clients'
    pings with GOAWAY "too_many_pings" and the channel reconnects.
    """
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _KEEPALIVE_MS // 2),
        ("grpc.http2.max_ping_strikes", 0),
    ]


class GrpcServer:
    """A grpc.aio server with health and reflection, bound to one address.

    `security` closes it (see `services.common.internal_security`): mutual TLS on the port and
    the shared token checked before any other interceptor runs; the default is the open plane.
    """

    def __init__(
        self,
        address: str,
        service_names: Sequence[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        *,
        security: InternalSecurity | None = None,
    ) -> None:
        self._address = address
        self._service_names = tuple(service_names)
        self._security = security or InternalSecurity()
        self.server = grpc.aio.server(
            interceptors=(
                *self._security.server_interceptors(),
                RequestIdServerInterceptor(),
                *interceptors,
            ),
            options=server_options(),
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0)."""
        credentials = self._security.server_credentials()
        if credentials is None:
            self.port = self.server.add_insecure_port(self._address)
        else:
            self.port = self.server.add_secure_port(self._address, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {self._address}")
        await self.server.start()
        for name in ("", *self._service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def run_until_signalled(
    server: GrpcServer,
    *,
    grace: float,
    cleanup: Callable[[], Awaitable[None]] | None = None,
    drain: Callable[[float], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully and run `cleanup`.

    `drain(grace)` runs first when given, while the server still serves what is in flight (a
    worker turns its runners DRAINING so new requests go elsewhere); the server then stops with
    whatever is left of `grace`.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start()
    _log.info("serving on port %d", port)
    try:
        await stop.wait()
        _log.info("shutting down (grace %.1fs)", grace)
        deadline = loop.time() + grace
        if drain is not None:
            await drain(grace)
        await server.stop(max(0.0, deadline - loop.time()))
    finally:
        if cleanup is not None:
            await cleanup()
