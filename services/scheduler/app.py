"""The running scheduler: the control plane plus its background jobs, started and stopped together.

`async with SchedulerApp(...) as app:` loads the stored model configurations, then starts one task
that owns a TaskGroup with the idle-unload reaper, the dead-worker/lease sweeper and the
autoscaler; leaving the block stops them, cancels loads in progress and closes every client
channel.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from services.common.clock import Clock
from services.common.waiting import wait_event
from services.scheduler.config import SchedulerSettings
from services.scheduler.control import ControlPlane
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.model_configs import ConfigStore
from services.scheduler.resolver import ModelResolver
from services.scheduler.workers import WorkerClient

__all__ = ["SchedulerApp"]

_log = logging.getLogger(__name__)


class SchedulerApp:
    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        resolver: ModelResolver,
        workers: WorkerClient,
        clock: Clock,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.control = ControlPlane(
            settings,
            resolver=resolver,
            workers=workers,
            clock=clock,
            configs=ConfigStore(settings.state_path),
            metrics=metrics,
        )
        self._stop = asyncio.Event()
        self._background: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SchedulerApp:
        await self.control.configs.load()
        self._background = asyncio.create_task(self._run_background(), name="scheduler background")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self.control.reaper.stop()
        try:
            if self._background is not None:
                await self._background
        finally:
            await self.control.aclose()

    async def _run_background(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.control.reaper.run(), name="idle-unload reaper")
            group.create_task(self._sweep_loop(), name="worker sweeper")
            group.create_task(self._autoscale_loop(), name="autoscaler")

    async def _autoscale_loop(self) -> None:
        """Every autoscale interval, re-place, scale up and scale down (see autoscale.py)."""
        while not self._stop.is_set():
            try:
                await self.control.autoscale_once(self.clock.monotonic())
            except Exception:  # one failed pass must not stop scaling for good
                _log.exception("autoscale pass failed")
            await wait_event(self._stop, self.settings.autoscale_interval)

    async def _sweep_loop(self) -> None:
        """Every heartbeat interval, forget dead workers and expired leases. How late each pass
        starts is the event loop's lag, which the sweep forgives (lag.py). The lag is measured
        on the loop's own clock: the injected clock may jump (tests), which is not lag."""
        loop = asyncio.get_running_loop()
        due: float | None = None
        while not self._stop.is_set():
            now = self.clock.monotonic()
            if due is not None:
                self.control.lag.record(now, loop.time() - due)
            try:
                await self.control.sweep(now)
            except Exception:  # one failed pass must not stop dead-worker detection for good
                _log.exception("sweep failed")
            due = loop.time() + self.settings.heartbeat_interval
            await wait_event(self._stop, self.settings.heartbeat_interval)
