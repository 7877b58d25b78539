"""Single-flight model loads and the unloads that must not overlap them.

The first Assign for a cold model reserves the load (placement picks the worker, membership gets a
STARTING placeholder), starts a task that calls Worker.Load, and waits on the load's future like
every later Assign for the same model. Nothing is awaited while the reservation is made and no
lock is held across the load: the event loop is the only synchronisation. Waiters are bounded per
model (RESOURCE_EXHAUSTED beyond), each waits at most until its own deadline, and the load itself
at most `load_timeout`. A failed load reaches every waiter and is forgotten, so the next Assign
tries again.

The load runs in its own task so that a first caller giving up does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from services.common.clock import Clock
from services.scheduler.errors import (
    LoadFailed,
    LoadTimeout,
    NoWorkerAvailable,
    QueueFull,
    SchedulerError,
    ShuttingDown,
)
from services.scheduler.membership import Membership
from services.scheduler.placement import choose_worker
from services.scheduler.resolver import ResolvedModel
from services.scheduler.snapshot import (
    ClusterSnapshot,
    RunnerReport,
    RunnerState,
    RunnerView,
    WorkerSpec,
)
from services.scheduler.workers import WorkerClient

__all__ = ["Loader"]

_log = logging.getLogger(__name__)


@dataclass
class _Load:
    model: ResolvedModel
    worker: WorkerSpec
    future: asyncio.Future[RunnerReport]


def _consume(future: asyncio.Future[RunnerReport]) -> None:
    # Every waiter may have given up; mark the outcome as seen so asyncio does not log it.
    if not future.cancelled():
        future.exception()


class Loader:
    def __init__(
        self,
        *,
        membership: Membership,
        workers: WorkerClient,
        clock: Clock,
        load_timeout: float,
        max_waiting: int,
        rpc_timeout: float,
    ) -> None:
        self._membership = membership
        self._workers = workers
        self._clock = clock
        self._load_timeout = load_timeout
        self._max_waiting = max_waiting
        self._rpc_timeout = rpc_timeout
        self._loads: dict[str, _Load] = {}
        self._waiting: Counter[str] = Counter()
        self._unloading: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def waiting(self, model_id: str) -> int:
        """Assign calls currently waiting for this model's load."""
        return self._waiting[model_id]

    def busy(self, model_id: str) -> bool:
        """A load is running or callers have not yet taken their lease: do not unload the model."""
        return model_id in self._loads or self._waiting[model_id] > 0

    async def ensure_loaded(
        self,
        model: ResolvedModel,
        snapshot: ClusterSnapshot,
        *,
        timeout: float,
        required_tags: Mapping[str, str] | None = None,
    ) -> RunnerReport:
        """Wait until the model is READY on some worker, starting the load if nobody has."""
        if self._closed:
            raise ShuttingDown("scheduler is shutting down")
        load = self._loads.get(model.model_id)
        if load is None:
            worker = choose_worker(snapshot, model.model_id, required_tags)
            if worker is None:
                raise NoWorkerAvailable(f"no worker available to serve {model.reference}")
            load = self._start(model, worker.spec)
        elif self._waiting[model.model_id] >= self._max_waiting:
            raise QueueFull(
                f"{self._max_waiting} requests are already waiting for {model.reference} to load"
            )
        self._waiting[model.model_id] += 1
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(load.future)
        except TimeoutError as exc:
            raise LoadTimeout(
                f"{model.reference} was not ready on worker {load.worker.worker_id} "
                f"within {timeout:.1f}s"
            ) from exc
        finally:
            self._waiting[model.model_id] -= 1
            if self._waiting[model.model_id] <= 0:
                del self._waiting[model.model_id]

    async def unload(self, runners: Sequence[RunnerView]) -> int:
        """Take the runners out of routing, tell their workers to stop them, then forget them.

        The runners leave routing before the first await, so a caller that picked them from a
        snapshot in the same step cannot race an Assign. Returns how many were unloaded. Worker
        errors are logged: the runner is forgotten anyway and comes back with the next heartbeat
        if its worker still has it.
        """
        started: list[tuple[RunnerView, int, asyncio.Event]] = []
        for runner in runners:
            generation = self._membership.begin_unload(runner.worker_id, runner.model_id)
            if generation is None:
                continue
            done = asyncio.Event()
            self._unloading[(runner.worker_id, runner.model_id)] = done
            started.append((runner, generation, done))
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

    def _start(self, model: ResolvedModel, worker: WorkerSpec) -> _Load:
        future: asyncio.Future[RunnerReport] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        load = _Load(model=model, worker=worker, future=future)
        self._loads[model.model_id] = load
        self._membership.reserve(
            worker.worker_id, model.model_id, model.reference, self._clock.monotonic()
        )
        _log.info("loading %s on worker %s", model.reference, worker.worker_id)
        task = asyncio.create_task(self._run(load), name=f"load {model.reference}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return load

    async def _run(self, load: _Load) -> None:
        model, worker = load.model, load.worker
        try:
            async with asyncio.timeout(self._load_timeout):
                pending_unload = self._unloading.get((worker.worker_id, model.model_id))
                if pending_unload is not None:
                    await pending_unload.wait()
                report = await self._workers.load(worker, model, timeout=self._load_timeout)
            report = replace(report, model_id=model.model_id)
            if report.state is not RunnerState.READY:
                reason = report.error or f"runner is {report.state.name} after loading"
                raise LoadFailed(model.reference, worker.worker_id, reason)
            if not self._membership.record_loaded(
                worker.worker_id, report, self._clock.monotonic()
            ):
                raise LoadFailed(model.reference, worker.worker_id, "worker left while loading")
        except TimeoutError:
            self._fail(
                load,
                LoadTimeout(
                    f"loading {model.reference} on worker {worker.worker_id} took longer than "
                    f"{self._load_timeout:.0f}s"
                ),
            )
        except SchedulerError as exc:
            self._fail(load, exc)
        except asyncio.CancelledError:
            self._fail(load, ShuttingDown("scheduler is shutting down"))
            raise
        except Exception as exc:  # a bug or an unexpected client error must still reach waiters
            _log.exception("loading %s on worker %s", model.reference, worker.worker_id)
            self._fail(load, LoadFailed(model.reference, worker.worker_id, repr(exc)))
        else:
            _log.info("loaded %s on worker %s", model.reference, worker.worker_id)
            load.future.set_result(report)
        finally:
            if self._loads.get(model.model_id) is load:
                del self._loads[model.model_id]

    def _fail(self, load: _Load, error: SchedulerError) -> None:
        _log.warning("%s", error)
        self._membership.cancel_reservation(load.worker.worker_id, load.model.model_id)
        if not load.future.done():
            load.future.set_exception(error)
