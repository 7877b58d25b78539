"""An in-process Scheduler gRPC server that records what workers tell it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc

from modelrunner.v1 import scheduler_pb2, scheduler_pb2_grpc

__all__ = ["FakeScheduler", "serve_scheduler"]


@dataclass
class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    heartbeat_interval_ms: int = 0
    known: bool = True
    registers: list[scheduler_pb2.RegisterRequest] = field(default_factory=list)
    heartbeats: list[scheduler_pb2.HeartbeatRequest] = field(default_factory=list)
    releases: list[scheduler_pb2.ReleaseRequest] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def Register(
        self, request: scheduler_pb2.RegisterRequest, context: Any
    ) -> scheduler_pb2.RegisterResponse:
        self.registers.append(request)
        self.changed.set()
        return scheduler_pb2.RegisterResponse(heartbeat_interval_ms=self.heartbeat_interval_ms)

    async def Heartbeat(
        self, request: scheduler_pb2.HeartbeatRequest, context: Any
    ) -> scheduler_pb2.HeartbeatResponse:
        self.heartbeats.append(request)
        self.changed.set()
        return scheduler_pb2.HeartbeatResponse(known=self.known)

    async def Release(
        self, request: scheduler_pb2.ReleaseRequest, context: Any
    ) -> scheduler_pb2.ReleaseResponse:
        self.releases.append(request)
        self.changed.set()
        return scheduler_pb2.ReleaseResponse()


async def serve_scheduler(
    fake: FakeScheduler, address: str = "127.0.0.1:0"
) -> tuple[grpc.aio.Server, str]:
    """Start `fake`; returns the server (stop it) and its address."""
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(fake, server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, f"127.0.0.1:{port}"
