"""The idle-unload reaper: a runner nobody used for `keep_alive` seconds is unloaded.

`reap_once(now)` does one pass and says when the next runner will fall due, so tests drive it
with a fake clock. `run()` repeats it, sleeping on an Event until that moment or until `poke()`
(a lease was released, which with keep-alive 0 means "unload now").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.common.clock import Clock
from services.scheduler.leases import LeaseTable
from services.scheduler.loader import Loader
from services.scheduler.membership import Membership
from services.scheduler.snapshot import ClusterSnapshot, RunnerState, RunnerView

__all__ = ["Reaper", "due_runners"]

_log = logging.getLogger(__name__)

# A runner skipped only because its model is loading is looked at again this much later.
_RECHECK_BUSY_MODEL = 1.0
# The loop never spins faster than this, whatever the clock says.
_MIN_WAIT = 0.05


def due_runners(
    snapshot: ClusterSnapshot, keep_alive: float | None, loading: frozenset[str] = frozenset()
) -> tuple[list[RunnerView], float | None]:
    """Runners to unload now, and the monotonic time the next idle one falls due (None: never).

    Busy runners are not counted towards the next time: their release pokes the reaper.
    """
    if keep_alive is None:
        return [], None
    now = snapshot.taken_at
    due: list[RunnerView] = []
    next_at: float | None = None
    for runner in snapshot.runners():
        if runner.pending or runner.state is RunnerState.STARTING or runner.busy:
            continue
        at = runner.idle_since + keep_alive
        if runner.model_id in loading:
            at = max(at, now + _RECHECK_BUSY_MODEL)
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
        loader: Loader,
        clock: Clock,
        keep_alive: float | None,
    ) -> None:
        self._membership = membership
        self._leases = leases
        self._loader = loader
        self._clock = clock
        self._keep_alive = keep_alive
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
        loading = frozenset(r.model_id for r in snapshot.runners() if self._loader.busy(r.model_id))
        due, next_at = due_runners(snapshot, self._keep_alive, loading)
        if due:
            for runner in due:
                _log.info(
                    "unloading %s from worker %s: idle for %.0fs",
                    runner.report.reference or runner.model_id,
                    runner.worker_id,
                    now - runner.idle_since,
                )
            await self._loader.unload(due)
        return next_at

    async def run(self) -> None:
        """Reap until `stop()`."""
        while not self._stopping:
            self._wake.clear()
            try:
                next_at = await self.reap_once(self._clock.monotonic())
            except Exception:  # one bad pass must not end idle unloading for good
                _log.exception("idle-unload pass failed")
                next_at = self._clock.monotonic() + _RECHECK_BUSY_MODEL
            if self._stopping:
                break
            timeout = None
            if next_at is not None:
                timeout = max(_MIN_WAIT, next_at - self._clock.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
