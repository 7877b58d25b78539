"""The idle-unload reaper: a runner nobody used for its model's keep-alive is unloaded.

`reap_once(now)` does one pass and says when the next runner will fall due, so tests drive it
with a fake clock. `run()` repeats it, sleeping on an Event until that moment or until `poke()`
(a lease was released, which with keep-alive 0 means "unload now"). Keep-alive is per model
(`/engines/_configure` may override MODEL_KEEP_ALIVE); the control plane says which runners are
protected (a configured minimum, requests waiting for the model, a load in progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from services.common.clock import Clock
from services.scheduler.leases import LeaseTable
from services.scheduler.membership import Membership
from services.scheduler.snapshot import ClusterSnapshot, RunnerState, RunnerView

__all__ = ["Reaper", "due_runners"]

_log = logging.getLogger(__name__)

# A runner skipped only because it is protected is looked at again this much later.
_RECHECK_PROTECTED = 1.0
# The loop never spins faster than this, whatever the clock says.
_MIN_WAIT = 0.05

KeepAliveFor = Callable[[str], float | None]


def due_runners(
    snapshot: ClusterSnapshot,
    keep_alive_for: KeepAliveFor,
    protected: Callable[[RunnerView], bool] = lambda runner: False,
) -> tuple[list[RunnerView], float | None]:
    """Runners to unload now, and the monotonic time the next idle one falls due (None: never).

    Busy runners are not counted towards the next time: their release pokes the reaper.
    """
    now = snapshot.taken_at
    due: list[RunnerView] = []
    next_at: float | None = None
    for runner in snapshot.runners():
        if runner.pending or runner.state is RunnerState.STARTING or runner.busy:
            continue
        keep_alive = keep_alive_for(runner.model_id)
        if keep_alive is None:
            continue
        at = runner.idle_since + keep_alive
        if at <= now and protected(runner):
            at = now + _RECHECK_PROTECTED
        elif at <= now:
            due.append(runner)
            continue
        next_at = at if next_at is None else min(next_at, at)
    return due, next_at


class Reaper:
    def __init__(
        self,
        *,
        membership: Membership,
        leases: LeaseTable,
        clock: Clock,
        keep_alive_for: KeepAliveFor,
        unload: Callable[[Sequence[RunnerView]], Awaitable[int]],
        protected: Callable[[RunnerView], bool] = lambda runner: False,
    ) -> None:
        self._membership = membership
        self._leases = leases
        self._clock = clock
        self._keep_alive_for = keep_alive_for
        self._unload = unload
        self._protected = protected
        self._wake = asyncio.Event()
        self._stopping = False

    def poke(self) -> None:
        """Look again now (a lease was released or a worker left)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def reap_once(self, now: float) -> float | None:
        """Unload every runner idle past keep-alive; returns when to look next (None: on poke)."""
        snapshot = self._membership.snapshot(now, self._leases.in_flight())
        due, next_at = due_runners(snapshot, self._keep_alive_for, self._protected)
        if due:
            for runner in due:
                _log.info(
                    "unloading %s from worker %s: idle for %.0fs",
                    runner.report.reference or runner.model_id,
                    runner.worker_id,
                    now - runner.idle_since,
                )
            await self._unload(due)
        return next_at

    async def run(self) -> None:
        """Reap until `stop()`."""
        while not self._stopping:
            self._wake.clear()
            try:
                next_at = await self.reap_once(self._clock.monotonic())
            except Exception:  # one bad pass must not end idle unloading for good
                _log.exception("idle-unload pass failed")
                next_at = self._clock.monotonic() + _RECHECK_PROTECTED
            if self._stopping:
                break
            timeout = None
            if next_at is not None:
                timeout = max(_MIN_WAIT, next_at - self._clock.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
