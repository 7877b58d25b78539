"""Telling the scheduler a request ended, so its in-flight counts stay exact."""

from __future__ import annotations

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

    async def release(self, lease_id: str, *, runner_failed: bool) -> None:
        """Release a lease; failures are logged, never raised (the lease expires anyway)."""
        if not lease_id:
            return  # a direct call, not routed by the scheduler
        try:
            await self._scheduler.Release(
                scheduler_pb2.ReleaseRequest(lease_id=lease_id, runner_failed=runner_failed),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            _log.warning(
                "releasing lease %s failed: %s: %s", lease_id, exc.code().name, exc.details()
            )
