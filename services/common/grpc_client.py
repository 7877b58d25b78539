"""Client channels to the other services, all with the same options."""

from __future__ import annotations

import grpc

from services.common.grpc_server import channel_options

__all__ = ["open_channel"]


def open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=channel_options())
