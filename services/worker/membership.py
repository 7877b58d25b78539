"""Keeping the scheduler informed: Register, then Heartbeat with the current runners.

A runner state change (a crash above all) triggers a heartbeat at once instead of at the next
tick, so the scheduler stops routing to a dead runner within milliseconds. The scheduler being
down never takes the worker down: calls are retried with capped exponential backoff, and the
worker registers again when the scheduler comes back or says it does not know this worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from modelrunner.v1 import scheduler_pb2
from services.common.waiting import wait_event
from services.worker.convert import runner_info
from services.worker.runner import RunnerSnapshot

if TYPE_CHECKING:
    from modelrunner.v1.scheduler_pb2_grpc import SchedulerAsyncStub

__all__ = ["Membership", "MembershipTimings", "WorkerIdentity"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    address: str
    tags: Mapping[str, str]
    # WORKER_MAX_RUNNERS, so placement does not send a load this worker would refuse.
    max_runners: int = 0


@dataclass(frozen=True)
class MembershipTimings:
    # Used until the scheduler's RegisterResponse names an interval.
    heartbeat_interval: float
    rpc_timeout: float
    max_backoff: float
    initial_backoff: float = 0.5


class Membership:
    """`run()` until cancelled; setting `changed` (or `notify()`) asks for a heartbeat now."""

    def __init__(
        self,
        scheduler: SchedulerAsyncStub,
        *,
        runners: Callable[[], Sequence[RunnerSnapshot]],
        memory_total: Callable[[], int],
        memory_free: Callable[[], int],
        cache_bytes: Callable[[], int],
        timings: MembershipTimings,
        # True once the worker shuts down (heartbeats say so: no new loads are placed here).
        draining: Callable[[], bool] = lambda: False,
        changed: asyncio.Event | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._runners = runners
        self._draining = draining
        self._memory_total = memory_total
        self._memory_free = memory_free
        self._cache_bytes = cache_bytes
        self._timings = timings
        self._changed = changed or asyncio.Event()
        self._interval = timings.heartbeat_interval
        self._identity: WorkerIdentity | None = None
        self._registered = asyncio.Event()

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    @registered.setter
    def registered(self, value: bool) -> None:
        if value:
            self._registered.set()
        else:
            self._registered.clear()

    async def wait_registered(self) -> None:
        """Returns once the scheduler has accepted this worker's registration."""
        await self._registered.wait()

    def notify(self) -> None:
        self._changed.set()

    async def run(self, identity: WorkerIdentity) -> None:
        """Register as `identity` and keep heartbeating; returns only by cancellation."""
        self._identity = identity
        backoff = self._timings.initial_backoff
        reachable = True
        while True:
            try:
                if not self.registered:
                    await self._register()
                else:
                    await self._wait_for_tick()
                    await self._heartbeat()
                backoff = self._timings.initial_backoff
                reachable = True
            except grpc.aio.AioRpcError as exc:
                log = _log.warning if reachable else _log.debug
                log(
                    "scheduler unreachable (%s: %s); retrying in %.1fs",
                    exc.code().name,
                    exc.details(),
                    backoff,
                )
                reachable = False
                # After an outage the scheduler may have restarted: register again.
                self.registered = False
                await self._wait(backoff)
                backoff = min(backoff * 2, self._timings.max_backoff)

    async def farewell(self) -> None:
        """One last heartbeat after shutdown so the scheduler drops this worker's runners now."""
        if not self.registered:
            return
        try:
            await self._heartbeat()
        except grpc.aio.AioRpcError as exc:
            _log.info("final heartbeat not delivered: %s", exc.code().name)

    async def _register(self) -> None:
        assert self._identity is not None
        runners = self._runners()
        self._changed.clear()
        response = await self._scheduler.Register(
            scheduler_pb2.RegisterRequest(
                worker=scheduler_pb2.WorkerInfo(
                    worker_id=self._identity.worker_id,
                    address=self._identity.address,
                    tags=dict(self._identity.tags),
                    memory_total_bytes=self._memory_total(),
                    memory_free_bytes=self._memory_free(),
                    cache_bytes=self._cache_bytes(),
                    max_runners=self._identity.max_runners,
                ),
                runners=[runner_info(runner) for runner in runners],
            ),
            timeout=self._timings.rpc_timeout,
        )
        if response.heartbeat_interval_ms > 0:
            self._interval = response.heartbeat_interval_ms / 1000
        self.registered = True
        _log.info(
            "registered with the scheduler as %s at %s (heartbeat every %.1fs)",
            self._identity.worker_id,
            self._identity.address,
            self._interval,
        )

    async def _heartbeat(self) -> None:
        assert self._identity is not None
        runners = self._runners()
        self._changed.clear()
        response = await self._scheduler.Heartbeat(
            scheduler_pb2.HeartbeatRequest(
                worker_id=self._identity.worker_id,
                runners=[runner_info(runner) for runner in runners],
                memory_free_bytes=self._memory_free(),
                cache_bytes=self._cache_bytes(),
                draining=self._draining(),
            ),
            timeout=self._timings.rpc_timeout,
        )
        if not response.known:
            _log.info("the scheduler does not know this worker; registering again")
            self.registered = False

    async def _wait_for_tick(self) -> None:
        await self._wait(self._interval)

    async def _wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, ending early when a runner changes state."""
        await wait_event(self._changed, seconds)
