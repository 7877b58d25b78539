"""The worker set and the runners each worker reports. This module is their only owner.

The worker's report is the truth about what is loaded: a runner it stops reporting is dropped, a
runner it reports that the scheduler did not know (after a scheduler restart, say) is adopted.
Two exceptions protect the scheduler's own fresher knowledge from a heartbeat that crossed it on
the wire: a runner whose load this scheduler is still waiting for (`pending`) is left alone, and a
runner the worker just confirmed through a Load response survives omission for `confirm_grace`.
For one process generation the later lifecycle state wins, so a stale STARTING never undoes
READY, and a runner marked FAILED or DRAINING here stays unroutable until the worker reports a
new generation.

Time is passed in (`now`, monotonic seconds) so callers decide the clock and tests need no sleep.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from services.scheduler.snapshot import (
    ClusterSnapshot,
    RunnerReport,
    RunnerState,
    RunnerView,
    WorkerSpec,
    WorkerView,
)

__all__ = ["Membership"]

_log = logging.getLogger(__name__)


@dataclass
class _Runner:
    report: RunnerReport
    first_seen: float
    pending: bool = False
    confirmed_at: float | None = None
    last_used: float | None = None
    last_assigned: float | None = None
    # The last view built of this runner and the in-flight count it was built with. Building a
    # frozen view costs microseconds, and an Assign reads every replica of its model but changes
    # one: reusing unchanged views keeps the hot path from paying for the whole fleet.
    view: RunnerView | None = field(default=None, compare=False, repr=False)

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name != "view":
            # Any change the view shows makes it stale.
            object.__setattr__(self, "view", None)


@dataclass
class _Worker:
    spec: WorkerSpec
    last_seen: float
    runners: dict[str, _Runner] = field(default_factory=dict)


class Membership:
    def __init__(self, *, worker_timeout: float, confirm_grace: float) -> None:
        self._worker_timeout = worker_timeout
        self._confirm_grace = confirm_grace
        self._workers: dict[str, _Worker] = {}
        # model id -> worker id -> runner: the same runners as `_workers`, indexed for Assign,
        # which must not scan every worker. Kept in step by `_put` and `_drop` only.
        self._by_model: dict[str, dict[str, _Runner]] = {}
        # Extra seconds of silence allowed while the scheduler itself lags (see lag.py); set by
        # each sweep, so routing and expiry agree on who is alive.
        self._grace = 0.0

    # Worker lifecycle -------------------------------------------------------------------------

    def register(
        self, spec: WorkerSpec, runners: Sequence[RunnerReport], now: float
    ) -> WorkerSpec | None:
        """Add or replace a worker; returns the spec it replaced, if any.

        Registration starts a new session, so its report is taken as is (a restarted worker may
        reuse generation numbers). Usage times carry over for the same model and generation, and
        loads in progress on the same address stay reserved.
        """
        previous = self._workers.get(spec.worker_id)
        worker = _Worker(spec=spec, last_seen=now)
        old_runners = previous.runners if previous and previous.spec.address == spec.address else {}
        for model_id, reserved in old_runners.items():
            if reserved.pending:
                worker.runners[model_id] = reserved
        for report in runners:
            if report.state is RunnerState.STOPPED or report.model_id in worker.runners:
                continue
            runner = _Runner(report=report, first_seen=now)
            known = old_runners.get(report.model_id)
            if known is not None and known.report.generation == report.generation:
                runner.first_seen = known.first_seen
                runner.last_used = known.last_used
                runner.last_assigned = known.last_assigned
            elif report.state is RunnerState.READY:
                _log.info("adopting runner %s on worker %s", report.model_id, spec.worker_id)
            worker.runners[report.model_id] = runner
        if previous is not None:
            self._unindex(previous)
        self._workers[spec.worker_id] = worker
        for model_id, runner in worker.runners.items():
            self._by_model.setdefault(model_id, {})[spec.worker_id] = runner
        return previous.spec if previous else None

    def heartbeat(
        self,
        worker_id: str,
        runners: Sequence[RunnerReport],
        memory_free_bytes: int,
        now: float,
        *,
        cache_bytes: int = 0,
        draining: bool = False,
    ) -> bool:
        """Refresh a worker and reconcile its runners; False if the worker must register again."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return False
        worker.last_seen = now
        if draining and not worker.spec.draining:
            _log.info("worker %s is shutting down: no new loads go there", worker_id)
        worker.spec = replace(
            worker.spec,
            memory_free_bytes=memory_free_bytes,
            cache_bytes=cache_bytes,
            draining=draining,
        )
        self._reconcile(worker, runners, now)
        return True

    def is_alive(self, worker_id: str, now: float) -> bool:
        worker = self._workers.get(worker_id)
        return worker is not None and self._alive(worker, now)

    def expire_dead(self, now: float, *, grace: float = 0.0) -> list[WorkerSpec]:
        """Forget workers whose heartbeats stopped; returns them so their leases can go too.

        `grace` extends the timeout, from now until the next sweep, by how late the scheduler
        itself has been: a heartbeat that arrived but was not processed yet does not make its
        worker dead."""
        self._grace = max(0.0, grace)
        dead = [w for w in self._workers.values() if not self._alive(w, now)]
        for worker in dead:
            del self._workers[worker.spec.worker_id]
            self._unindex(worker)
            _log.warning(
                "worker %s (%s) missed heartbeats for %.1fs: removed with %d runner(s)",
                worker.spec.worker_id,
                worker.spec.address,
                now - worker.last_seen,
                len(worker.runners),
            )
        return [worker.spec for worker in dead]

    # Runner changes made by the scheduler itself ----------------------------------------------

    def reserve(
        self,
        worker_id: str,
        model_id: str,
        reference: str,
        now: float,
        *,
        memory_bytes: int = 0,
        parallel: int = 0,
        context_size: int = 0,
    ) -> bool:
        """Record a load this scheduler is starting, so placement counts its memory and heartbeats
        keep it."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return False
        current = worker.runners.get(model_id)
        generation = current.report.generation if current else 0
        report = RunnerReport(
            model_id=model_id,
            reference=reference,
            state=RunnerState.STARTING,
            generation=generation,
            memory_bytes=memory_bytes,
            parallel=parallel,
            context_size=context_size,
        )
        if current is None:
            self._put(worker, model_id, _Runner(report=report, first_seen=now, pending=True))
        else:
            current.report = report
            current.pending = True
        return True

    def record_loaded(self, worker_id: str, report: RunnerReport, now: float) -> bool:
        """Take the runner a Load response describes; False if the worker is gone meanwhile."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return False
        runner = worker.runners.get(report.model_id)
        if runner is None:
            runner = _Runner(report=report, first_seen=now)
            self._put(worker, report.model_id, runner)
        runner.report = report
        runner.pending = False
        runner.confirmed_at = now
        return True

    def cancel_reservation(self, worker_id: str, model_id: str) -> None:
        """A load failed: drop its placeholder (a runner the worker reports again reappears)."""
        worker = self._workers.get(worker_id)
        if worker is not None:
            runner = worker.runners.get(model_id)
            if runner is not None and runner.pending:
                self._drop(worker, model_id)

    def mark_failed(self, worker_id: str, model_id: str, generation: int, error: str) -> bool:
        """Stop routing to a runner a request saw die. Ignored for another process generation."""
        runner = self._runner(worker_id, model_id)
        if runner is None or runner.pending or runner.report.generation != generation:
            return False
        runner.report = replace(runner.report, state=RunnerState.FAILED, error=error)
        return True

    def begin_unload(self, worker_id: str, model_id: str) -> int | None:
        """Take a runner out of routing before it is unloaded; returns its generation."""
        runner = self._runner(worker_id, model_id)
        if runner is None or runner.pending:
            return None
        runner.report = replace(runner.report, state=RunnerState.DRAINING)
        return runner.report.generation

    def finish_unload(self, worker_id: str, model_id: str, generation: int) -> None:
        """Forget an unloaded runner, unless a new load took its place meanwhile."""
        runner = self._runner(worker_id, model_id)
        if (
            runner is not None
            and not runner.pending
            and runner.report.generation == generation
            and runner.report.state is RunnerState.DRAINING
        ):
            self._drop(self._workers[worker_id], model_id)

    def touch(self, worker_id: str, model_id: str, now: float, *, assigned: bool = False) -> None:
        """Note a use of the runner: keep-alive counts from the last one, routing from assigns."""
        runner = self._runner(worker_id, model_id)
        if runner is None:
            return
        runner.last_used = now
        if assigned:
            runner.last_assigned = now

    # Reading ---------------------------------------------------------------------------------

    def replicas(
        self, model_id: str, now: float, in_flight: Mapping[tuple[str, str], int]
    ) -> list[RunnerView]:
        """The model's runners on alive workers, every state: the hot path's view, which costs one
        dict lookup per worker instead of a whole snapshot."""
        views = []
        workers = self._workers
        # `_alive`, hoisted out of the loop: this runs once per replica on every Assign.
        heard_since = now - self._worker_timeout - self._grace
        for worker_id, runner in self._by_model.get(model_id, {}).items():
            worker = workers[worker_id]
            if worker.last_seen >= heard_since:
                views.append(self._view(worker_id, worker, model_id, runner, in_flight))
        return views

    def workers_with_tags(self, required_tags: Mapping[str, str]) -> set[str]:
        """Ids of the workers carrying every required tag with the same value."""
        return {
            worker_id
            for worker_id, worker in self._workers.items()
            if all(worker.spec.tags.get(key) == value for key, value in required_tags.items())
        }

    def _view(
        self,
        worker_id: str,
        worker: _Worker,
        model_id: str,
        runner: _Runner,
        in_flight: Mapping[tuple[str, str], int],
    ) -> RunnerView:
        count = in_flight.get((worker_id, model_id), 0)
        view = runner.view
        if (
            view is not None
            and view.in_flight == count
            and view.worker_address is worker.spec.address
        ):
            return view
        view = RunnerView(
            worker_id=worker_id,
            worker_address=worker.spec.address,
            report=runner.report,
            in_flight=count,
            pending=runner.pending,
            first_seen=runner.first_seen,
            last_used=runner.last_used,
            last_assigned=runner.last_assigned,
        )
        runner.view = view
        return view

    def snapshot(self, now: float, in_flight: Mapping[tuple[str, str], int]) -> ClusterSnapshot:
        """An immutable copy of every worker and runner; `in_flight` comes from the lease table."""
        workers = []
        for worker_id in sorted(self._workers):
            worker = self._workers[worker_id]
            runners = tuple(
                self._view(worker_id, worker, model_id, runner, in_flight)
                for model_id, runner in sorted(worker.runners.items())
            )
            workers.append(
                WorkerView(
                    spec=worker.spec,
                    last_seen=worker.last_seen,
                    alive=self._alive(worker, now),
                    runners=runners,
                )
            )
        return ClusterSnapshot(taken_at=now, workers=tuple(workers))

    # Internals -------------------------------------------------------------------------------

    def _alive(self, worker: _Worker, now: float) -> bool:
        return now - worker.last_seen <= self._worker_timeout + self._grace

    def _put(self, worker: _Worker, model_id: str, runner: _Runner) -> None:
        worker.runners[model_id] = runner
        self._by_model.setdefault(model_id, {})[worker.spec.worker_id] = runner

    def _drop(self, worker: _Worker, model_id: str) -> None:
        del worker.runners[model_id]
        by_worker = self._by_model.get(model_id)
        if by_worker is not None and by_worker.get(worker.spec.worker_id) is not None:
            del by_worker[worker.spec.worker_id]
            if not by_worker:
                del self._by_model[model_id]

    def _unindex(self, worker: _Worker) -> None:
        """Remove a replaced or dead worker's runners from the per-model index."""
        worker_id = worker.spec.worker_id
        for model_id in worker.runners:
            by_worker = self._by_model.get(model_id)
            if by_worker is not None and by_worker.get(worker_id) is worker.runners[model_id]:
                del by_worker[worker_id]
                if not by_worker:
                    del self._by_model[model_id]

    def _runner(self, worker_id: str, model_id: str) -> _Runner | None:
        worker = self._workers.get(worker_id)
        return worker.runners.get(model_id) if worker else None

    def _reconcile(self, worker: _Worker, reports: Sequence[RunnerReport], now: float) -> None:
        reported = {report.model_id: report for report in reports}
        for model_id, report in reported.items():
            runner = worker.runners.get(model_id)
            if runner is None:
                if report.state is not RunnerState.STOPPED:
                    if report.state is RunnerState.READY:
                        _log.info(
                            "adopting runner %s on worker %s", model_id, worker.spec.worker_id
                        )
                    self._put(worker, model_id, _Runner(report=report, first_seen=now))
                continue
            if runner.pending or report.generation < runner.report.generation:
                continue
            state = report.state
            if report.generation == runner.report.generation:
                state = max(state, runner.report.state)
            if state is RunnerState.STOPPED:
                self._drop(worker, model_id)
                continue
            if state is not report.state:
                # Our later state wins, but keep the worker's error text and counters.
                report = replace(report, state=state, error=report.error or runner.report.error)
            runner.report = report
        for model_id in [m for m in worker.runners if m not in reported]:
            runner = worker.runners[model_id]
            if runner.pending:
                continue
            if runner.confirmed_at is not None and now - runner.confirmed_at < self._confirm_grace:
                continue
            _log.info("worker %s no longer reports runner %s", worker.spec.worker_id, model_id)
            self._drop(worker, model_id)
