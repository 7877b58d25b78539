"""Client channels to the other services, all with the same options."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from services.common.grpc_server import channel_options

__all__ = ["open_channel"]


def open_channel(
    address: str, *, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
) -> grpc.aio.Channel:
    """`interceptors`: e.g. `request_id_client_interceptors()` for calls made on a request's
    behalf."""
    return grpc.aio.insecure_channel(
        address, options=channel_options(), interceptors=list(interceptors) or None
    )
