"""Model loads, and the unloads that must not overlap them.

`start` reserves a load on the worker placement chose (membership gets a STARTING placeholder
carrying the memory estimate, so the next placement counts it) and runs Worker.Load in a task,
after unloading the idle runners placement chose to evict. Nothing is awaited while the
reservation is made and no lock is held across the load: the event loop is the only
synchronisation. One load per (model, worker) at a time; several workers may load the same model
(replicas). The load is bounded by `load_timeout`; its outcome reaches the control plane through
`on_finished`, which serves or fails the requests waiting for it.

The load runs in its own task so that a caller giving up does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from services.common.clock import Clock
from services.scheduler.errors import (
    LoadFailed,
    LoadTimeout,
    SchedulerError,
    ShuttingDown,
)
from services.scheduler.membership import Membership
from services.scheduler.metrics import SchedulerMetrics, UnloadReason
from services.scheduler.resolver import ResolvedModel
from services.scheduler.snapshot import RunnerState, RunnerView, WorkerSpec
from services.scheduler.workers import LoadOptions, WorkerClient

__all__ = ["LoadOutcome", "Loader"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOutcome:
    model: ResolvedModel
    worker: WorkerSpec
    # None when the runner is READY.
    error: SchedulerError | None


@dataclass
class _Load:
    model: ResolvedModel
    worker: WorkerSpec
    options: LoadOptions
    evict: tuple[RunnerView, ...]


class Loader:
    def __init__(
        self,
        *,
        membership: Membership,
        workers: WorkerClient,
        clock: Clock,
        load_timeout: float,
        rpc_timeout: float,
        on_finished: Callable[[LoadOutcome], None] = lambda outcome: None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self._membership = membership
        self._workers = workers
        self._clock = clock
        self._load_timeout = load_timeout
        self._rpc_timeout = rpc_timeout
        self._on_finished = on_finished
        self._metrics = metrics if metrics is not None else SchedulerMetrics()
        self._loads: dict[tuple[str, str], _Load] = {}
        self._unloading: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def loading(self, model_id: str) -> int:
        """Loads of this model in progress (one per worker)."""
        return sum(1 for model, _ in self._loads if model == model_id)

    def busy(self, model_id: str) -> bool:
        """A load of the model is running: do not unload it from under the load."""
        return self.loading(model_id) > 0

    def start(
        self,
        model: ResolvedModel,
        worker: WorkerSpec,
        options: LoadOptions,
        evict: Sequence[RunnerView] = (),
    ) -> bool:
        """Begin loading `model` on `worker`; False if that load is already running."""
        if self._closed:
            raise ShuttingDown("scheduler is shutting down")
        key = (model.model_id, worker.worker_id)
        if key in self._loads:
            return False
        load = _Load(model=model, worker=worker, options=options, evict=tuple(evict))
        self._loads[key] = load
        self._membership.reserve(
            worker.worker_id,
            model.model_id,
            model.reference,
            self._clock.monotonic(),
            memory_bytes=options.memory_bytes,
            parallel=options.parallel,
            context_size=options.context_size,
        )
        _log.info(
            "loading %s on worker %s (%d slot(s) x %d tokens, ~%.0f MiB)%s",
            model.reference,
            worker.worker_id,
            options.parallel,
            options.context_size,
            options.memory_bytes / 2**20,
            f" after evicting {', '.join(r.report.reference or r.model_id for r in evict)}"
            if evict
            else "",
        )
        task = asyncio.create_task(self._run(load), name=f"load {model.reference}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def unload(
        self, runners: Sequence[RunnerView], *, reason: UnloadReason = UnloadReason.OPERATOR
    ) -> int:
        """Take the runners out of routing, tell their workers to stop them, then forget them.

        The runners leave routing before the first await, so a caller that picked them from a
        snapshot in the same step cannot race an Assign. Returns how many were unloaded. Worker
        errors are logged: the runner is forgotten anyway and comes back with the next heartbeat
        if its worker still has it. `reason` is what the unload counts as in the metrics.
        """
        started: list[tuple[RunnerView, int, asyncio.Event]] = []
        for runner in runners:
            generation = self._membership.begin_unload(runner.worker_id, runner.model_id)
            if generation is None:
                continue
            done = asyncio.Event()
            self._unloading[(runner.worker_id, runner.model_id)] = done
            started.append((runner, generation, done))
        self._metrics.unloaded(reason, len(started))
        if started:
            await asyncio.gather(*(self._unload_one(*entry) for entry in started))
        return len(started)

    async def _unload_one(self, runner: RunnerView, generation: int, done: asyncio.Event) -> None:
        worker = WorkerSpec(worker_id=runner.worker_id, address=runner.worker_address)
        try:
            await self._workers.unload(worker, runner.model_id, timeout=self._rpc_timeout)
            _log.info("unloaded %s from worker %s", runner.report.reference, runner.worker_id)
        except SchedulerError as exc:
            _log.warning("unloading %s: %s", runner.model_id, exc)
        finally:
            self._membership.finish_unload(runner.worker_id, runner.model_id, generation)
            done.set()
            key = (runner.worker_id, runner.model_id)
            if self._unloading.get(key) is done:
                del self._unloading[key]

    async def aclose(self) -> None:
        """Refuse new loads and cancel running ones; their waiters get ShuttingDown."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, load: _Load) -> None:
        model, worker = load.model, load.worker
        error: SchedulerError | None = None
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(self._load_timeout):
                if load.evict:
                    await self.unload(load.evict, reason=UnloadReason.EVICTED)
                pending_unload = self._unloading.get((worker.worker_id, model.model_id))
                if pending_unload is not None:
                    await pending_unload.wait()
                report = await self._workers.load(
                    worker, model, load.options, timeout=self._load_timeout
                )
            report = replace(report, model_id=model.model_id)
            if report.state is not RunnerState.READY:
                reason = report.error or f"runner is {report.state.name} after loading"
                raise LoadFailed(model.reference, worker.worker_id, reason)
            if not self._membership.record_loaded(
                worker.worker_id, report, self._clock.monotonic()
            ):
                raise LoadFailed(model.reference, worker.worker_id, "worker left while loading")
        except TimeoutError:
            error = LoadTimeout(
                f"loading {model.reference} on worker {worker.worker_id} took longer than "
                f"{self._load_timeout:.0f}s"
            )
        except SchedulerError as exc:
            error = exc
        except asyncio.CancelledError:
            error = ShuttingDown("scheduler is shutting down")
            raise
        except Exception as exc:  # a bug or an unexpected client error must still reach waiters
            _log.exception("loading %s on worker %s", model.reference, worker.worker_id)
            error = LoadFailed(model.reference, worker.worker_id, repr(exc))
        else:
            _log.info("loaded %s on worker %s", model.reference, worker.worker_id)
        finally:
            key = (model.model_id, worker.worker_id)
            if self._loads.get(key) is load:
                del self._loads[key]
            if error is not None:
                _log.warning("%s", error)
                self._membership.cancel_reservation(worker.worker_id, model.model_id)
            self._metrics.load_finished(model.reference, error, self._clock.monotonic() - started)
            self._on_finished(LoadOutcome(model=model, worker=worker, error=error))
