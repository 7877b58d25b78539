"""What the pool needs of an inference engine, so that runners are engine-agnostic.

Two engines implement it: `llama_engine.LlamaServerEngine` (a llama-server process per runner)
and `simulated.engine.SimulatedEngine` (no process, no blobs: timing and answers are simulated,
so tests and benchmarks run 100+ workers on a laptop). The pool owns the runner state machine,
single-flight loads and leases; an engine only prepares a `Backend` and the backend serves.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from services.worker.artifact import RuntimeLayers

__all__ = [
    "Backend",
    "Endpoint",
    "Engine",
    "LaunchConfig",
    "LoadOptions",
    "RunnerClient",
    "RunnerLaunch",
    "Upstream",
]


class Endpoint(enum.Enum):
    """OpenAI-style endpoints and their llama-server paths."""

    CHAT_COMPLETIONS = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"


@dataclass(frozen=True)
class LoadOptions:
    """A LoadRequest's per-model options."""

    # Tokens per slot; 0: the packaged context size, else the engine's default.
    context_size: int = 0
    # Slots; 0: the engine's default.
    parallel: int = 0
    # llama-server arguments, after LLAMA_ARGS.
    llama_args: tuple[str, ...] = ()
    # The scheduler's estimate of the runner's memory; reported when above the weights' size.
    memory_estimate_bytes: int = 0


@dataclass(frozen=True)
class LaunchConfig:
    """What a runner is started with; a READY runner asked for another one is restarted."""

    # Resolved: the LoadRequest's, else the packaged one, else 0 (the engine's default).
    context_size: int
    # As requested; 0: the engine's default.
    parallel: int
    llama_args: tuple[str, ...]


@dataclass(frozen=True)
class RunnerLaunch:
    """Everything an engine needs to prepare one runner."""

    model_id: str
    reference: str
    generation: int
    layers: RuntimeLayers
    config: LaunchConfig


class Upstream(Protocol):
    """An engine's answer to one request, head known, body not yet read."""

    @property
    def status_code(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as the engine writes it; UpstreamError if it breaks off or stalls."""
        ...


class RunnerClient(Protocol):
    def forward(
        self, endpoint: Endpoint, body: bytes, *, stream: bool
    ) -> AbstractAsyncContextManager[Upstream]:
        """Send one OpenAI-style request body; the answer is released when the block exits."""
        ...

    async def metrics(self, *, timeout: float, max_bytes: int) -> str:
        """llama.cpp-style Prometheus text; UpstreamError when unavailable."""
        ...


class Backend(Protocol):
    """One runner's serving part: a started process, or a simulation of one."""

    @property
    def client(self) -> RunnerClient: ...

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None:
        """Until ready to serve. Raises a WorkerError (typed) on failure, with nothing left
        running; cancellation leaves nothing running either."""
        ...

    async def wait_exit(self) -> str:
        """Returns (with the reason) when the backend dies on its own after `start()`."""
        ...

    async def stop(self) -> None:
        """Release everything for good; safe to call in any state, more than once."""
        ...


class Engine(Protocol):
    def slots(self, requested: int) -> int:
        """The slots a runner asked for `requested` reports (0: unknown, the engine decides)."""
        ...

    async def prepare(self, launch: RunnerLaunch) -> Backend:
        """Get what the runner needs (blobs, command line); does not start anything."""
        ...
