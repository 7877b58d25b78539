"""One llama-server process serving one model, as an explicit state machine.

    STARTING --> READY --> DRAINING --> STOPPED
        |          |           |
        +----------+-----------+------> FAILED

STARTING -> STOPPED too (unloaded while loading). STOPPED and FAILED are final: a model that
needs serving again gets a new Runner with a higher generation. Readiness polls GET /health
(503 while loading, 200 ready) until WORKER_READY_TIMEOUT and fails at once if the process exits.
A crash after READY turns the runner FAILED with the reason read from llama-server's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.worker.errors import (
    InvalidTransitionError,
    ModelNotReadyError,
    RunnerStoppedError,
    RunnerTimeoutError,
    WorkerError,
    classify_exit,
    crash_message,
)
from services.worker.llama_client import ClientLimits, LlamaClient
from services.worker.process import ChildProcess

__all__ = [
    "Runner",
    "RunnerSnapshot",
    "RunnerState",
    "RunnerTimeouts",
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

# States in which a process may be alive (they count against WORKER_MAX_RUNNERS).
LIVE_STATES = frozenset({RunnerState.STARTING, RunnerState.READY, RunnerState.DRAINING})


def check_transition(current: RunnerState, target: RunnerState) -> None:
    """InvalidTransitionError unless the table allows current -> target."""
    if target not in _TRANSITIONS[current]:
        raise InvalidTransitionError(f"runner cannot go from {current.name} to {target.name}")


@dataclass(frozen=True)
class RunnerTimeouts:
    ready_timeout: float
    health_poll_interval: float
    stop_timeout: float
    log_max_bytes: int


@dataclass(frozen=True)
class RunnerSnapshot:
    """A copy of a runner's state for reporting (ListRunners, heartbeats)."""

    model_id: str
    reference: str
    generation: int
    state: RunnerState
    in_flight: int
    memory_bytes: int
    context_size: int
    error: str
    pid: int | None


class Runner:
    """Owns one ChildProcess, its socket, its HTTP client and its in-flight count."""

    def __init__(
        self,
        *,
        model_id: str,
        reference: str,
        generation: int,
        socket_path: Path,
        log_path: Path,
        memory_bytes: int,
        context_size: int,
        timeouts: RunnerTimeouts,
        client_limits: ClientLimits,
        on_change: Callable[[Runner], None],
    ) -> None:
        self.model_id = model_id
        self.reference = reference
        self.generation = generation
        self.socket_path = socket_path
        self._log_path = log_path
        self._memory_bytes = memory_bytes
        self._context_size = context_size
        self._timeouts = timeouts
        self._client_limits = client_limits
        self._on_change = on_change
        self._state = RunnerState.STARTING
        self._error = ""
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._process: ChildProcess | None = None
        self._exit_watch: asyncio.Task[None] | None = None
        self.client = LlamaClient(socket_path, client_limits)

    @property
    def state(self) -> RunnerState:
        return self._state

    @property
    def error(self) -> str:
        return self._error

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def snapshot(self) -> RunnerSnapshot:
        return RunnerSnapshot(
            model_id=self.model_id,
            reference=self.reference,
            generation=self.generation,
            state=self._state,
            in_flight=self._in_flight,
            memory_bytes=self._memory_bytes,
            context_size=self._context_size,
            error=self._error,
            pid=None if self._process is None else self._process.pid,
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

    async def start(self, argv: Sequence[str]) -> None:
        """Spawn llama-server and wait until it is ready.

        Raises RunnerStartError (typed from its output), RunnerTimeoutError or, when `stop()` ran
        meanwhile, RunnerStoppedError. On any failure the process is dead and the socket gone.
        """
        if self._process is not None:
            raise RuntimeError("a Runner is started once")
        if self._stopping or self._state is not RunnerState.STARTING:
            raise RunnerStoppedError("the model was unloaded while it was loading")
        self.socket_path.unlink(missing_ok=True)
        self._process = ChildProcess(
            argv,
            log_path=self._log_path,
            stop_timeout=self._timeouts.stop_timeout,
            log_max_bytes=self._timeouts.log_max_bytes,
        )
        try:
            await self._process.start()
            self._exit_watch = asyncio.create_task(
                self._watch_exit(), name=f"runner-exit-{self.model_id[:19]}-{self.generation}"
            )
            await self._wait_ready()
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
        self._set_state(RunnerState.READY)

    async def fail_before_start(self, error: str) -> None:
        """Preparing the launch (fetching blobs) failed: FAILED with that reason."""
        if self._state is RunnerState.STARTING:
            self._set_state(RunnerState.FAILED, error)
        await self._release_resources()

    async def _wait_ready(self) -> None:
        assert self._process is not None and self._exit_watch is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeouts.ready_timeout
        while True:
            if self._exit_watch.done():
                raise classify_exit(self._process.tail(), self._process.returncode)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RunnerTimeoutError(
                    f"llama-server was not ready within {self._timeouts.ready_timeout:g}s "
                    "(WORKER_READY_TIMEOUT)"
                )
            status = await self.client.health(
                timeout=min(self._client_limits.connect_timeout, remaining)
            )
            # Re-checked after the await: it may have answered 200 and then died.
            if status == 200 and not self._exit_watch.done():
                return
            # Wake early if the process exits: a crash at start must fail the load at once.
            await asyncio.wait(
                {self._exit_watch},
                timeout=min(self._timeouts.health_poll_interval, max(remaining, 0.0)),
            )

    async def _watch_exit(self) -> None:
        assert self._process is not None
        returncode = await self._process.wait()
        if self._stopping or self._state is RunnerState.STARTING:
            return  # expected, or start() reports it
        self.socket_path.unlink(missing_ok=True)
        self._set_state(RunnerState.FAILED, crash_message(self._process.tail(), returncode))

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
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            _log.warning(
                "runner %s: %d requests still running after %.1fs drain; stopping anyway",
                self.model_id[:19],
                self._in_flight,
                timeout,
            )

    async def stop(self) -> None:
        """Stop the process for good and release everything; FAILED runners stay FAILED."""
        self._stopping = True
        if self._state is RunnerState.READY:
            self._set_state(RunnerState.DRAINING)
        await self._release_resources()
        if self._state in (RunnerState.DRAINING, RunnerState.STARTING):
            self._set_state(RunnerState.STOPPED)

    async def _release_resources(self) -> None:
        # Every step runs even when an earlier await is cancelled: no orphan process or socket.
        try:
            # Idle keep-alive connections first: llama-server waits for open ones on SIGTERM.
            await self.client.aclose()
        finally:
            try:
                if self._process is not None:
                    await self._process.stop()
                if self._exit_watch is not None:
                    await self._exit_watch
            finally:
                self.socket_path.unlink(missing_ok=True)
