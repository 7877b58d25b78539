"""Client channels to the other services, all with the same options."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from services.common.grpc_server import channel_options
from services.common.internal_security import InternalSecurity

__all__ = ["open_channel"]


def open_channel(
    address: str,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    security: InternalSecurity | None = None,
    options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """`interceptors`: e.g. `request_id_client_interceptors()` for calls made on a request's
    behalf. `security`: mutual TLS and the internal token (the default is a plain channel).
    `options`: channel arguments on top of the shared ones (e.g. reconnect backoff)."""
    guard = security or InternalSecurity()
    chain = [*guard.client_interceptors(), *interceptors] or None
    credentials = guard.channel_credentials()
    merged = [*channel_options(), *options]
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=merged, interceptors=chain)
    return grpc.aio.secure_channel(
        address, credentials, options=[*merged, *guard.channel_options()], interceptors=chain
    )
