"""The worker's runners, one per model id (manifest digest), and their leases.

All state lives here and is touched only from the event loop, between awaits; nothing awaits a
start or readiness while holding anything: a Load reserves its slot (a STARTING runner), then
awaits the start in a task the pool owns. Concurrent Loads of one model with the same options
await that one task (single-flight). A Load whose options (context, slots, arguments) differ from
the running ones restarts the runner with the new ones: the old one drains, then stops. Requests
lease a READY runner with `async with pool.acquire(model_id)`. Restart policy: none automatic. A
FAILED runner keeps its error for reporting until the next Load replaces it (the scheduler
decides), or an Unload removes it. What serves a runner is the engine's business (`engine.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from services.common.digest import InvalidDigest, parse_digest
from services.worker.args import check_model_args
from services.worker.artifact import ModelSpec, runtime_layers
from services.worker.engine import Engine, LaunchConfig, LoadOptions, RunnerLaunch
from services.worker.errors import (
    CapacityError,
    InvalidModelError,
    ModelNotReadyError,
    RunnerStoppedError,
    UpstreamError,
    WorkerError,
)
from services.worker.runner import LIVE_STATES, Runner, RunnerSnapshot, RunnerState
from services.worker.worker_metrics import WorkerMetrics

__all__ = ["PoolSettings", "RunnerPool"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSettings:
    max_runners: int
    drain_timeout: float


class RunnerPool:
    def __init__(
        self,
        settings: PoolSettings,
        engine: Engine,
        on_change: Callable[[], None] = lambda: None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._on_change = on_change
        self._metrics = metrics if metrics is not None else WorkerMetrics()
        self._runners: dict[str, Runner] = {}
        self._loads: dict[str, asyncio.Task[Runner]] = {}
        # Unloaded or replaced runners still draining: they hold resources and count against the cap.
        self._retiring: set[Runner] = set()
        self._generation = 0
        self._closed = False

    # -- reporting ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Draining or closed: the worker is shutting down and refuses new loads."""
        return self._closed

    def snapshot(self) -> list[RunnerSnapshot]:
        runners = [*self._runners.values(), *self._retiring]
        return sorted(
            (runner.snapshot() for runner in runners), key=lambda s: (s.model_id, s.generation)
        )

    def loaded_bytes(self) -> int:
        """Memory of every runner that may hold some."""
        return sum(s.memory_bytes for s in self.snapshot() if s.state in LIVE_STATES)

    def _live_count(self) -> int:
        return sum(1 for s in self.snapshot() if s.state in LIVE_STATES)

    def _runner_changed(self, runner: Runner) -> None:
        if runner.state is RunnerState.FAILED and runner.became_ready:
            self._metrics.runner_crashed()
        if self._runners.get(runner.model_id) is not runner and runner not in self._retiring:
            _log.debug("state change of a replaced runner (gen %d) ignored", runner.generation)
            return
        self._on_change()

    # -- load / unload -----------------------------------------------------------------------

    async def load(
        self, spec: ModelSpec, reference: str, options: LoadOptions | None = None
    ) -> RunnerSnapshot:
        """Make the model READY here with `options`; concurrent calls share one start."""
        options = options or LoadOptions()
        check_model_args(options.llama_args)
        config = LaunchConfig(
            context_size=options.context_size or spec.context_size,
            parallel=options.parallel,
            llama_args=tuple(options.llama_args),
        )
        while True:
            if self._closed:
                raise RunnerStoppedError("the worker is shutting down")
            task = self._loads.get(spec.model_id)
            if task is not None and task.done():
                task = None  # its done callback has not run yet
            if task is None:
                current = self._runners.get(spec.model_id)
                if (
                    current is not None
                    and current.state is RunnerState.READY
                    and current.config == config
                ):
                    return current.snapshot()
                task = self._begin_load(spec, reference, config, options, current)
            elif (loading := self._runners.get(spec.model_id)) and loading.config != config:
                # A load with other options is under way: let it end, then restart with ours.
                await asyncio.wait({task})
                continue
            try:
                runner = await asyncio.shield(task)
            except asyncio.CancelledError:
                current_task = asyncio.current_task()
                if task.cancelled() and current_task is not None and not current_task.cancelling():
                    # The load was called off (Unload, shutdown), not this caller.
                    raise RunnerStoppedError(
                        f"loading {spec.model_id} was cancelled: the model was unloaded"
                    ) from None
                raise
            return runner.snapshot()

    def _begin_load(
        self,
        spec: ModelSpec,
        reference: str,
        config: LaunchConfig,
        options: LoadOptions,
        stale: Runner | None,
    ) -> asyncio.Task[Runner]:
        try:
            parse_digest(spec.model_id)
        except InvalidDigest as exc:
            raise InvalidModelError(f"invalid model id: {exc}") from exc
        layers = runtime_layers(spec)
        replaced = 1 if stale is not None and stale.state in LIVE_STATES else 0
        if self._live_count() - replaced >= self._settings.max_runners:
            raise CapacityError(
                f"this worker already runs {self._settings.max_runners} models "
                "(WORKER_MAX_RUNNERS); unload one first"
            )
        self._generation += 1
        runner = Runner(
            model_id=spec.model_id,
            reference=reference,
            generation=self._generation,
            config=config,
            memory_bytes=max(layers.weights_bytes, options.memory_estimate_bytes),
            parallel=self._engine.slots(config.parallel),
            on_change=self._runner_changed,
        )
        if stale is not None:
            self._metrics.runner_restarted()
        if stale is not None and replaced:
            # Reported (and counted) while it drains; its requests finish on the old options.
            self._retiring.add(stale)
        self._runners[spec.model_id] = runner
        launch = RunnerLaunch(
            model_id=spec.model_id,
            reference=reference,
            generation=self._generation,
            layers=layers,
            config=config,
        )
        task = asyncio.create_task(
            self._start(runner, launch, stale), name=f"load-{spec.model_id[:19]}"
        )
        self._loads[spec.model_id] = task
        task.add_done_callback(lambda done: self._load_finished(spec.model_id, done))
        self._on_change()
        return task

    def _load_finished(self, model_id: str, task: asyncio.Task[Runner]) -> None:
        if self._loads.get(model_id) is task:
            del self._loads[model_id]
        if not task.cancelled() and task.exception() is not None:
            _log.warning("loading %s failed: %s", model_id, task.exception())

    async def _start(self, runner: Runner, launch: RunnerLaunch, stale: Runner | None) -> Runner:
        """`_launch`, counted and timed in the metrics (from the Load to READY)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        error: BaseException | None = None
        try:
            return await self._launch(runner, launch, stale)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._metrics.runner_started(error, loop.time() - started)

    async def _launch(self, runner: Runner, launch: RunnerLaunch, stale: Runner | None) -> Runner:
        try:
            if stale is not None:
                await self._retire(stale)
            backend = await self._engine.prepare(launch)
        except asyncio.CancelledError:
            await runner.stop()
            raise
        except Exception as exc:
            await runner.fail_before_start(str(exc))
            raise
        await runner.start(backend)
        return runner

    async def _retire(self, runner: Runner) -> None:
        """Drain (up to WORKER_DRAIN_TIMEOUT) and stop a runner already out of `_runners`."""
        if runner.state in LIVE_STATES:
            self._retiring.add(runner)
        try:
            await runner.drain(self._settings.drain_timeout)
        finally:
            try:
                await runner.stop()
            finally:
                self._retiring.discard(runner)
                self._on_change()

    async def unload(self, model_id: str) -> bool:
        """Stop the model's runner (draining requests up to WORKER_DRAIN_TIMEOUT); False if none."""
        task = self._loads.pop(model_id, None)
        runner = self._runners.pop(model_id, None)
        if task is None and runner is None:
            return False
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        elif runner is not None:
            await self._retire(runner)
        self._on_change()
        return True

    # -- requests ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def acquire(self, model_id: str) -> AsyncIterator[Runner]:
        """Lease the model's READY runner for one request; released on every exit path."""
        runner = self._runners.get(model_id)
        if runner is None:
            raise ModelNotReadyError(f"model {model_id} is not loaded on this worker")
        with runner.lease():
            try:
                yield runner
            except UpstreamError as exc:
                self._metrics.upstream_failed(exc)
                raise

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Shutdown's first step: refuse new loads and leases, let in-flight requests finish.

        Every READY runner turns DRAINING, which the next heartbeat (sent at once: the state
        changed) reports, so the scheduler routes new requests elsewhere while these finish.
        Returns when none is in flight or after `timeout`; `close()` then stops the processes.
        """
        self._closed = True
        # A heartbeat now, even with no runner to change state: the scheduler stops placing
        # loads here.
        self._on_change()
        runners = list(self._runners.values())
        if runners:
            _log.info("draining %d runners for up to %.1fs", len(runners), timeout)
        await asyncio.gather(*(runner.drain(timeout) for runner in runners))

    async def close(self) -> None:
        """Stop every runner; none survives the worker."""
        self._closed = True
        tasks = list(self._loads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        runners = [*self._runners.values(), *self._retiring]
        results = await asyncio.gather(
            *(runner.stop() for runner in runners), return_exceptions=True
        )
        for runner, result in zip(runners, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, WorkerError):
                _log.error("stopping runner %s failed: %r", runner.model_id, result)
        self._on_change()
