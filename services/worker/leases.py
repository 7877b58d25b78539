"""Telling the scheduler a request ended, so its in-flight counts stay exact."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc

from modelrunner.v1 import scheduler_pb2

if TYPE_CHECKING:
    from modelrunner.v1.scheduler_pb2_grpc import SchedulerAsyncStub

__all__ = ["LeaseReleaser"]

_log = logging.getLogger(__name__)


class LeaseReleaser:
    def __init__(self, scheduler: SchedulerAsyncStub, timeout: float) -> None:
        self._scheduler = scheduler
        self._timeout = timeout
        self._pending: set[asyncio.Task[None]] = set()

    async def release(self, lease_id: str, *, runner_failed: bool) -> None:
        """Release a lease; failures are logged, never raised (the lease expires anyway).

        The call runs in its own task and survives the caller's cancellation: a client that
        hangs up just after the last chunk cancels the Generate handler while it is releasing,
        and a lost Release would hold the runner's slot until the lease timeout.
        """
        if not lease_id:
            return  # a direct call, not routed by the scheduler
        task = asyncio.create_task(self._release(lease_id, runner_failed), name="release lease")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    async def close(self) -> None:
        """Wait for releases still in flight (each is bounded by the RPC timeout)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _release(self, lease_id: str, runner_failed: bool) -> None:
        try:
            await self._scheduler.Release(
                scheduler_pb2.ReleaseRequest(lease_id=lease_id, runner_failed=runner_failed),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            _log.warning(
                "releasing lease %s failed: %s: %s", lease_id, exc.code().name, exc.details()
            )
