"""The idle-unload reaper: a runner nobody used for its model's keep-alive is unloaded.

`reap_once(now)` does one pass and says when the next runner will fall due, so tests drive it
with a fake clock. `run()` repeats it, sleeping on an Event until that moment, until `due_by(at)`
names an earlier one (a runner went idle: with keep-alive 0 that means "unload now"), or until
`poke()`. A pass snapshots the whole cluster, so a release must not cost one: releases say when
their runner falls due, and only one that falls due before the planned wake-up wakes the reaper,
which at steady load is once per keep-alive period, not once per request. Keep-alive is per model
(`/engines/_configure` may override MODEL_KEEP_ALIVE); the control plane says which runners are
protected (a configured minimum, requests waiting for the model, a load in progress).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from services.common.clock import Clock
from services.common.waiting import wait_event
from services.scheduler.leases import LeaseTable
from services.scheduler.membership import Membership
from services.scheduler.model_configs import ConfigStore, effective_keep_alive
from services.scheduler.snapshot import ClusterSnapshot, RunnerState, RunnerView

__all__ = ["KeepAlives", "Reaper", "due_runners"]

_log = logging.getLogger(__name__)

# A runner skipped only because it is protected is looked at again this much later.
_RECHECK_PROTECTED = 1.0
# The loop never spins faster than this, whatever the clock says.
_MIN_WAIT = 0.05

KeepAliveFor = Callable[[str], float | None]


class KeepAlives:
    """Each model's keep-alive. The last request that named one (Ollama's `keep_alive`; negative:
    never unload) wins over the model's configuration, which wins over MODEL_KEEP_ALIVE.

    Request overrides are bounded by the models the registry resolves, and `prune` drops those
    of models that left every worker."""

    def __init__(self, *, default: float | None, configs: ConfigStore) -> None:
        self._default = default
        self._configs = configs
        self._requested: dict[str, float | None] = {}

    def request(self, model_id: str, seconds: float) -> None:
        self._requested[model_id] = None if seconds < 0 else seconds

    def for_model(self, model_id: str) -> float | None:
        """Seconds an idle runner of the model stays loaded; None: never unloaded."""
        if model_id in self._requested:
            return self._requested[model_id]
        entry = self._configs.get(model_id)
        return effective_keep_alive(entry.config if entry else None, self._default)

    def prune(self, in_use: Callable[[str], bool]) -> None:
        for model_id in [m for m in self._requested if not in_use(m)]:
            del self._requested[model_id]


def due_runners(
    snapshot: ClusterSnapshot,
    keep_alive_for: KeepAliveFor,
    protected: Callable[[RunnerView], bool] = lambda runner: False,
) -> tuple[list[RunnerView], float | None]:
    """Runners to unload now, and the monotonic time the next idle one falls due (None: never).

    Busy runners are not counted towards the next time: their release calls `Reaper.due_by`.
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
        # When the sleeping reaper wakes next (monotonic; None: only when woken).
        self._planned: float | None = None
        # A pass is running: whatever falls due meanwhile may be missing from its snapshot.
        self._in_pass = False
        self.passes = 0

    def poke(self) -> None:
        """Look again now (a worker left, leases expired)."""
        self._wake.set()

    def due_by(self, at: float) -> None:
        """A runner falls due at `at` (monotonic): wake then, unless a wake-up is planned earlier.

        O(1): this is on every Release."""
        if self._in_pass:
            self._wake.set()
            return
        planned = self._planned
        if planned is None or at < planned:
            self._planned = at
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def reap_once(self, now: float) -> float | None:
        """Unload every runner idle past keep-alive; returns when to look next (None: on poke)."""
        self.passes += 1
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
            self._in_pass = True
            try:
                next_at = await self.reap_once(self._clock.monotonic())
            except Exception:  # one bad pass must not end idle unloading for good
                _log.exception("idle-unload pass failed")
                next_at = self._clock.monotonic() + _RECHECK_PROTECTED
            finally:
                self._in_pass = False
            if self._stopping:
                break
            if self._wake.is_set():
                # Something fell due during the pass, after its snapshot: look again.
                continue
            self._planned = next_at
            timeout = None
            if next_at is not None:
                timeout = max(_MIN_WAIT, next_at - self._clock.monotonic())
            await wait_event(self._wake, timeout)
