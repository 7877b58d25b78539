from __future__ import annotations

import asyncio
from typing import Any

from modelrunner.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.common.grpc_client import open_channel
from services.worker.leases import LeaseReleaser
from tests.unit.worker.fake_scheduler import FakeScheduler, serve_scheduler


class SlowScheduler(FakeScheduler):
    """Holds every Release until `gate` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()

    async def Release(
        self, request: scheduler_pb2.ReleaseRequest, context: Any
    ) -> scheduler_pb2.ReleaseResponse:
        self.arrived.set()
        await self.gate.wait()
        return await super().Release(request, context)


async def test_a_release_survives_the_cancellation_of_its_caller() -> None:
    """A client hanging up right after the last chunk cancels the Generate handler while it is
    releasing; the lease must still be released, or the slot stays taken for the lease timeout."""
    scheduler = SlowScheduler()
    server, address = await serve_scheduler(scheduler)
    channel = open_channel(address)
    releaser = LeaseReleaser(scheduler_pb2_grpc.SchedulerStub(channel), timeout=5.0)
    try:
        caller = asyncio.create_task(releaser.release("lease-1", runner_failed=False))
        await asyncio.wait_for(scheduler.arrived.wait(), 5)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        assert caller.cancelled()
        scheduler.gate.set()
        await asyncio.wait_for(releaser.close(), 5)
        assert [r.lease_id for r in scheduler.releases] == ["lease-1"]
    finally:
        await channel.close()
        await server.stop(None)
