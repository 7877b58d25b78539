"""Helpers for the worker tests: in-memory model blobs, pool settings, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from services.common.digest import sha256_digest
from services.worker.artifact import GGUF_MEDIA_TYPE, Layer, ModelSpec
from services.worker.llama_client import ClientLimits
from services.worker.llama_engine import (
    BlobSource,
    LlamaEngineSettings,
    LlamaServerEngine,
    RunnerTimeouts,
)
from services.worker.pool import PoolSettings, RunnerPool
from services.worker.worker_metrics import WorkerMetrics

__all__ = ["FAKE_SERVER", "FakeBlobs", "eventually", "make_pool"]

FAKE_SERVER = Path(__file__).with_name("fake_llama_server.py")


class FakeBlobs:
    """A BlobSource over files written by the test (the real cache has its own tests)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}
        self.calls = 0
        self.gate: asyncio.Event | None = None

    def add(self, content: bytes, media_type: str = GGUF_MEDIA_TYPE) -> Layer:
        digest = sha256_digest(content)
        path = self.root / digest.split(":")[1]
        path.write_bytes(content)
        self.paths[digest] = path
        return Layer(media_type=media_type, digest=digest, size=len(content))

    def model(self, content: bytes, *extra: Layer) -> ModelSpec:
        layer = self.add(content)
        return ModelSpec(model_id=sha256_digest(b"manifest:" + content), layers=(layer, *extra))

    async def ensure(self, digest: str, size: int) -> Path:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.paths[digest]


def make_pool(
    binary: Path,
    runtime_dir: Path,
    blobs: BlobSource,
    *,
    llama_args: tuple[str, ...] = (),
    max_runners: int = 4,
    ready_timeout: float = 10.0,
    stop_timeout: float = 2.0,
    drain_timeout: float = 5.0,
    stream_idle_timeout: float = 5.0,
    on_change: Callable[[], None] = lambda: None,
    metrics: WorkerMetrics | None = None,
) -> RunnerPool:
    """A pool of the llama.cpp engine running `binary` (the stand-in llama-server)."""
    engine = LlamaServerEngine(
        LlamaEngineSettings(
            binary=binary,
            runtime_dir=runtime_dir,
            name_prefix="t",
            llama_args=llama_args,
            runner_timeouts=RunnerTimeouts(
                ready_timeout=ready_timeout,
                health_poll_interval=0.02,
                stop_timeout=stop_timeout,
                log_max_bytes=1 << 20,
            ),
            client_limits=ClientLimits(
                connect_timeout=1.0,
                stream_idle_timeout=stream_idle_timeout,
                request_timeout=stream_idle_timeout,
                max_connections=8,
            ),
        ),
        blobs,
    )
    return RunnerPool(
        PoolSettings(max_runners=max_runners, drain_timeout=drain_timeout),
        engine,
        on_change,
        metrics=metrics,
    )


async def eventually(predicate: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    """Poll until `predicate()` holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)
