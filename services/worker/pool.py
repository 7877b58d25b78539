"""The worker's runners, one per model id (manifest digest), and their leases.

All state lives here and is touched only from the event loop, between awaits; nothing awaits a
process start or readiness while holding anything: a Load reserves its slot (a STARTING runner),
then awaits the start in a task the pool owns. Concurrent Loads of one model await that one task
(single-flight). Requests lease a READY runner with `async with pool.acquire(model_id)`.
Restart policy: none automatic. A FAILED runner keeps its error for reporting until the next
Load replaces it (the scheduler decides), or an Unload removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common.digest import InvalidDigest, parse_digest
from services.worker.args import LaunchSpec, build_args
from services.worker.artifact import ModelSpec, RuntimeLayers, runtime_layers
from services.worker.errors import (
    CapacityError,
    InvalidModelError,
    ModelNotReadyError,
    RunnerStoppedError,
    WorkerError,
)
from services.worker.llama_client import ClientLimits
from services.worker.runner import (
    LIVE_STATES,
    Runner,
    RunnerSnapshot,
    RunnerState,
    RunnerTimeouts,
)

__all__ = ["BlobSource", "PoolSettings", "RunnerPool"]

_log = logging.getLogger(__name__)


class BlobSource(Protocol):
    async def ensure(self, digest: str, size: int) -> Path: ...


@dataclass(frozen=True)
class PoolSettings:
    binary: Path
    runtime_dir: Path
    # Distinguishes this worker's files in a runtime dir shared with other workers (its pid).
    name_prefix: str
    llama_args: Sequence[str]
    max_runners: int
    drain_timeout: float
    runner_timeouts: RunnerTimeouts
    client_limits: ClientLimits
    # --threads for llama-server; 0 leaves llama.cpp's default.
    llama_threads: int = 0


class RunnerPool:
    def __init__(
        self,
        settings: PoolSettings,
        blobs: BlobSource,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._blobs = blobs
        self._on_change = on_change
        self._runners: dict[str, Runner] = {}
        self._loads: dict[str, asyncio.Task[Runner]] = {}
        # Unloaded runners still draining: they hold a process and count against the cap.
        self._retiring: set[Runner] = set()
        self._generation = 0
        self._closed = False

    # -- reporting ---------------------------------------------------------------------------

    def snapshot(self) -> list[RunnerSnapshot]:
        runners = [*self._runners.values(), *self._retiring]
        return sorted(
            (runner.snapshot() for runner in runners), key=lambda s: (s.model_id, s.generation)
        )

    def loaded_bytes(self) -> int:
        """Weights of every runner that may hold memory."""
        return sum(s.memory_bytes for s in self.snapshot() if s.state in LIVE_STATES)

    def _live_count(self) -> int:
        return sum(1 for s in self.snapshot() if s.state in LIVE_STATES)

    def _runner_changed(self, runner: Runner) -> None:
        if self._runners.get(runner.model_id) is not runner and runner not in self._retiring:
            _log.debug("state change of a replaced runner (gen %d) ignored", runner.generation)
            return
        self._on_change()

    # -- load / unload -----------------------------------------------------------------------

    async def load(self, spec: ModelSpec, reference: str, context_size: int = 0) -> RunnerSnapshot:
        """Make the model READY here; concurrent calls for one model share one start."""
        if self._closed:
            raise RunnerStoppedError("the worker is shutting down")
        task = self._loads.get(spec.model_id)
        if task is None:
            current = self._runners.get(spec.model_id)
            if current is not None and current.state is RunnerState.READY:
                return current.snapshot()
            task = self._begin_load(spec, reference, context_size, current)
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
        self, spec: ModelSpec, reference: str, context_size: int, stale: Runner | None
    ) -> asyncio.Task[Runner]:
        try:
            _, encoded = parse_digest(spec.model_id)
        except InvalidDigest as exc:
            raise InvalidModelError(f"invalid model id: {exc}") from exc
        layers = runtime_layers(spec)
        if self._live_count() >= self._settings.max_runners:
            raise CapacityError(
                f"this worker already runs {self._settings.max_runners} models "
                "(WORKER_MAX_RUNNERS); unload one first"
            )
        self._generation += 1
        prefix = f"{self._settings.name_prefix}-{encoded[:12]}"
        runtime = self._settings.runtime_dir
        runner = Runner(
            model_id=spec.model_id,
            reference=reference,
            generation=self._generation,
            socket_path=runtime / f"{prefix}-{self._generation}.sock",
            log_path=runtime / "logs" / f"{prefix}.log",
            memory_bytes=layers.weights_bytes,
            context_size=context_size or spec.context_size,
            timeouts=self._settings.runner_timeouts,
            client_limits=self._settings.client_limits,
            on_change=self._runner_changed,
        )
        self._runners[spec.model_id] = runner
        task = asyncio.create_task(
            self._start(runner, layers, stale), name=f"load-{spec.model_id[:19]}"
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

    async def _start(self, runner: Runner, layers: RuntimeLayers, stale: Runner | None) -> Runner:
        try:
            if stale is not None:
                await stale.stop()
            argv = await self._prepare(runner, layers)
        except asyncio.CancelledError:
            await runner.stop()
            raise
        except Exception as exc:
            await runner.fail_before_start(str(exc))
            raise
        await runner.start(argv)
        return runner

    async def _prepare(self, runner: Runner, layers: RuntimeLayers) -> list[str]:
        gguf_paths = await asyncio.gather(
            *(self._blobs.ensure(layer.digest, layer.size) for layer in layers.gguf)
        )
        template = None
        if layers.chat_template is not None:
            template = await self._blobs.ensure(
                layers.chat_template.digest, layers.chat_template.size
            )
        model_path = (
            gguf_paths[0] if len(gguf_paths) == 1 else self._link_shards(runner, gguf_paths)
        )
        spec = LaunchSpec(
            model_path=model_path,
            socket_path=runner.socket_path,
            context_size=runner.snapshot().context_size,
            chat_template_path=template,
            alias=runner.reference,
            threads=self._settings.llama_threads,
            extra_args=self._settings.llama_args,
        )
        return [str(self._settings.binary), *build_args(spec)]

    def _link_shards(self, runner: Runner, paths: Sequence[Path]) -> Path:
        """llama.cpp finds the shards of a split GGUF by name: give the blobs those names."""
        bundle = runner.socket_path.with_suffix(".shards")
        bundle.mkdir(parents=True, exist_ok=True)
        total = len(paths)
        links = []
        for index, path in enumerate(paths, start=1):
            link = bundle / f"model-{index:05d}-of-{total:05d}.gguf"
            link.unlink(missing_ok=True)
            link.symlink_to(path)
            links.append(link)
        return links[0]

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
            self._retiring.add(runner)
            try:
                await runner.drain(self._settings.drain_timeout)
                await runner.stop()
            finally:
                self._retiring.discard(runner)
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
            yield runner

    # -- shutdown ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every llama-server; none survives the worker."""
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
