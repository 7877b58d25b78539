"""An in-process Registry gRPC server that serves blobs from memory (FetchBlob only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.grpc_client import open_channel

__all__ = ["FakeRegistry", "running_registry"]

_ServicerContext = grpc.aio.ServicerContext[registry_pb2.FetchBlobRequest, registry_pb2.BlobChunk]


@dataclass
class FakeRegistry(registry_pb2_grpc.RegistryServicer):
    chunk_size: int = 64 * 1024
    blobs: dict[str, bytes] = field(default_factory=dict)
    # What to send instead of the stored bytes (to test verification).
    served: dict[str, bytes] = field(default_factory=dict)
    # Abort a stream with UNAVAILABLE after this many bytes (to test resume).
    fail_after: int | None = None
    # When set, every stream waits for it before its first byte.
    gate: asyncio.Event | None = None
    requests: list[tuple[str, int]] = field(default_factory=list)

    async def FetchBlob(  # type: ignore[override]
        self, request: registry_pb2.FetchBlobRequest, context: _ServicerContext
    ) -> AsyncIterator[registry_pb2.BlobChunk]:
        self.requests.append((request.digest, request.offset))
        if request.digest not in self.blobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"blob {request.digest} not found")
        data = self.served.get(request.digest, self.blobs[request.digest])
        if self.gate is not None:
            await self.gate.wait()
        sent = 0
        first = True
        for start in range(request.offset, max(len(data), request.offset + 1), self.chunk_size):
            piece = data[start : start + self.chunk_size]
            if self.fail_after is not None and sent >= self.fail_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (fake)")
            yield registry_pb2.BlobChunk(data=piece, total_size=len(data) if first else 0)
            first = False
            sent += len(piece)


class running_registry:
    """Serve `fake` on 127.0.0.1:0 and hand out a stub; stopped on exit."""

    def __init__(self, fake: FakeRegistry) -> None:
        self._fake = fake
        self._server = grpc.aio.server()
        self._channel: grpc.aio.Channel | None = None
        self.address = ""

    async def __aenter__(self) -> registry_pb2_grpc.RegistryAsyncStub:
        registry_pb2_grpc.add_RegistryServicer_to_server(self._fake, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        self._channel = open_channel(self.address)
        return registry_pb2_grpc.RegistryStub(self._channel)

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
        await self._server.stop(None)
