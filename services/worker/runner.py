"""One runner serving one model, as an explicit state machine, whatever engine serves it.

    STARTING --> READY --> DRAINING --> STOPPED
        |          |           |
        +----------+-----------+------> FAILED

STARTING -> STOPPED too (unloaded while loading). STOPPED and FAILED are final: a model that
needs serving again gets a new Runner with a higher generation. The engine's Backend does the
serving (a llama-server process, or a simulation); a backend that dies after READY turns the
runner FAILED with the reason it gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from services.common.request_id import detached_context
from services.common.waiting import wait_event
from services.worker.engine import Backend, LaunchConfig, RunnerClient
from services.worker.errors import (
    InvalidTransitionError,
    ModelNotReadyError,
    RunnerStoppedError,
    WorkerError,
)

__all__ = [
    "LIVE_STATES",
    "Runner",
    "RunnerSnapshot",
    "RunnerState",
    "check_transition",
]

_log = logging.getLogger(__name__)


class RunnerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


_TRANSITIONS: Mapping[RunnerState, frozenset[RunnerState]] = {
    RunnerState.STARTING: frozenset({RunnerState.READY, RunnerState.STOPPED, RunnerState.FAILED}),
    RunnerState.READY: frozenset({RunnerState.DRAINING, RunnerState.FAILED}),
    RunnerState.DRAINING: frozenset({RunnerState.STOPPED, RunnerState.FAILED}),
    RunnerState.STOPPED: frozenset(),
    RunnerState.FAILED: frozenset(),
}

# States in which a backend may hold resources (they count against WORKER_MAX_RUNNERS).
LIVE_STATES = frozenset({RunnerState.STARTING, RunnerState.READY, RunnerState.DRAINING})


def check_transition(current: RunnerState, target: RunnerState) -> None:
    """InvalidTransitionError unless the table allows current -> target."""
    if target not in _TRANSITIONS[current]:
        raise InvalidTransitionError(f"runner cannot go from {current.name} to {target.name}")


@dataclass(frozen=True)
class RunnerSnapshot:
    """A copy of a runner's state for reporting (ListRunners, heartbeats)."""

    model_id: str
    reference: str
    generation: int
    state: RunnerState
    in_flight: int
    # max(weights on disk, the scheduler's estimate).
    memory_bytes: int
    # Tokens per slot; 0 when unknown.
    context_size: int
    error: str
    pid: int | None
    # Slots it serves at once; 0 when the engine's default is unknown.
    parallel: int = 0


class Runner:
    """Owns one Backend, its exit watch and the in-flight count."""

    def __init__(
        self,
        *,
        model_id: str,
        reference: str,
        generation: int,
        config: LaunchConfig,
        memory_bytes: int,
        parallel: int,
        on_change: Callable[[Runner], None],
    ) -> None:
        self.model_id = model_id
        self.reference = reference
        self.generation = generation
        self.config = config
        self._memory_bytes = memory_bytes
        self._parallel = parallel
        self._on_change = on_change
        self._state = RunnerState.STARTING
        self._error = ""
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._backend: Backend | None = None
        self._exit_watch: asyncio.Task[None] | None = None
        # Reached READY once: a FAILED runner that did was a crash, not a failed start.
        self.became_ready = False

    @property
    def state(self) -> RunnerState:
        return self._state

    @property
    def error(self) -> str:
        return self._error

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def client(self) -> RunnerClient:
        """The backend's client; only leased (READY) runners are asked for it."""
        if self._backend is None:
            raise ModelNotReadyError(f"model {self.model_id} has not started on this worker")
        return self._backend.client

    def snapshot(self) -> RunnerSnapshot:
        return RunnerSnapshot(
            model_id=self.model_id,
            reference=self.reference,
            generation=self.generation,
            state=self._state,
            in_flight=self._in_flight,
            memory_bytes=self._memory_bytes,
            context_size=self.config.context_size,
            error=self._error,
            pid=None if self._backend is None else self._backend.pid,
            parallel=self._parallel,
        )

    def _set_state(self, target: RunnerState, error: str = "") -> None:
        check_transition(self._state, target)
        self._state = target
        if error:
            self._error = error
        _log.info(
            "runner %s gen %d -> %s%s",
            self.model_id[:19],
            self.generation,
            target.name,
            f": {error}" if error else "",
        )
        self._on_change(self)

    async def start(self, backend: Backend) -> None:
        """Start `backend` and wait until it is ready.

        Raises the backend's typed error or, when `stop()` ran meanwhile, RunnerStoppedError. On
        any failure the backend holds nothing.
        """
        if self._backend is not None:
            raise RuntimeError("a Runner is started once")
        self._backend = backend
        if self._stopping or self._state is not RunnerState.STARTING:
            await backend.stop()
            raise RunnerStoppedError("the model was unloaded while it was loading")
        try:
            await backend.start()
        except BaseException as exc:
            await self._release_resources()
            if self._stopping or isinstance(exc, asyncio.CancelledError):
                if self._state is RunnerState.STARTING:
                    self._set_state(RunnerState.STOPPED)
                if isinstance(exc, WorkerError):
                    raise RunnerStoppedError("the model was unloaded while it was loading") from exc
                raise
            if self._state is RunnerState.STARTING:
                self._set_state(RunnerState.FAILED, str(exc))
            raise
        self._exit_watch = asyncio.create_task(
            self._watch_exit(backend),
            name=f"runner-exit-{self.model_id[:19]}-{self.generation}",
            # It outlives the Load that started it: a crash is not that request's doing.
            context=detached_context(),
        )
        self.became_ready = True
        self._set_state(RunnerState.READY)

    async def fail_before_start(self, error: str) -> None:
        """Preparing the launch (fetching blobs) failed: FAILED with that reason."""
        if self._state is RunnerState.STARTING:
            self._set_state(RunnerState.FAILED, error)
        await self._release_resources()

    async def _watch_exit(self, backend: Backend) -> None:
        reason = await backend.wait_exit()
        if self._stopping or self._state not in (RunnerState.READY, RunnerState.DRAINING):
            return  # expected
        # FAILED first: the scheduler must stop routing here at once; releasing comes after.
        self._set_state(RunnerState.FAILED, reason)
        await backend.stop()

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Count one request in flight; ModelNotReadyError unless READY."""
        if self._state is not RunnerState.READY:
            raise ModelNotReadyError(
                f"model {self.model_id} is {self._state.name} on this worker"
                + (f": {self._error}" if self._error else "")
            )
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Stop taking requests and wait up to `timeout` for those in flight to finish."""
        if self._state is RunnerState.READY:
            self._set_state(RunnerState.DRAINING)
        if self._state is not RunnerState.DRAINING:
            return
        if not await wait_event(self._idle, timeout):
            _log.warning(
                "runner %s: %d requests still running after %.1fs drain; stopping anyway",
                self.model_id[:19],
                self._in_flight,
                timeout,
            )

    async def stop(self) -> None:
        """Stop the backend for good and release everything; FAILED runners stay FAILED."""
        self._stopping = True
        if self._state is RunnerState.READY:
            self._set_state(RunnerState.DRAINING)
        await self._release_resources()
        if self._state in (RunnerState.DRAINING, RunnerState.STARTING):
            self._set_state(RunnerState.STOPPED)

    async def _release_resources(self) -> None:
        # Both steps run even when the first await is cancelled: no orphan process or task.
        try:
            if self._backend is not None:
                await self._backend.stop()
        finally:
            watch = self._exit_watch
            if watch is not None and watch is not asyncio.current_task():
                if not watch.done():
                    watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
