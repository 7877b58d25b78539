"""The llama.cpp engine: each runner is one `llama-server` process on a Unix socket.

Preparing a runner fetches its GGUF layers (and chat template) into the worker's blob cache and
builds the command line (`args.py`). Readiness polls GET /health (503 while loading, 200 ready)
until WORKER_READY_TIMEOUT and fails at once, with the reason typed from its output, if the
process exits. A crash after READY is reported by `wait_exit` with the reason from its output.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common.digest import parse_digest
from services.worker.args import LaunchSpec, build_args
from services.worker.engine import RunnerLaunch
from services.worker.errors import RunnerTimeoutError, classify_exit, crash_message
from services.worker.llama_client import ClientLimits, LlamaClient
from services.worker.process import ChildProcess

__all__ = [
    "BlobSource",
    "LlamaEngineSettings",
    "LlamaServerBackend",
    "LlamaServerEngine",
    "RunnerTimeouts",
]


class BlobSource(Protocol):
    async def ensure(self, digest: str, size: int) -> Path: ...


@dataclass(frozen=True)
class RunnerTimeouts:
    ready_timeout: float
    health_poll_interval: float
    stop_timeout: float
    log_max_bytes: int


@dataclass(frozen=True)
class LlamaEngineSettings:
    binary: Path
    runtime_dir: Path
    # Distinguishes this worker's files in a runtime dir shared with other workers (its pid).
    name_prefix: str
    # LLAMA_ARGS, for every model.
    llama_args: Sequence[str]
    runner_timeouts: RunnerTimeouts
    client_limits: ClientLimits
    # --threads for llama-server; 0 leaves llama.cpp's default.
    llama_threads: int = 0


class LlamaServerBackend:
    """One llama-server process, its socket and its HTTP client."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        socket_path: Path,
        log_path: Path,
        timeouts: RunnerTimeouts,
        client_limits: ClientLimits,
    ) -> None:
        self._argv = list(argv)
        self.socket_path = socket_path
        self._log_path = log_path
        self._timeouts = timeouts
        self._client_limits = client_limits
        self._process: ChildProcess | None = None
        self._exited: asyncio.Task[int] | None = None
        self._client = LlamaClient(socket_path, client_limits)

    @property
    def client(self) -> LlamaClient:
        return self._client

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        """Spawn llama-server and wait until /health answers 200.

        RunnerStartError (typed from its output) or RunnerTimeoutError; on any failure or
        cancellation the process is dead and the socket gone.
        """
        if self._process is not None:
            raise RuntimeError("a llama-server backend is started once")
        self.socket_path.unlink(missing_ok=True)
        self._process = ChildProcess(
            self._argv,
            log_path=self._log_path,
            stop_timeout=self._timeouts.stop_timeout,
            log_max_bytes=self._timeouts.log_max_bytes,
        )
        try:
            await self._process.start()
            self._exited = asyncio.create_task(
                self._process.wait(), name=f"llama-server-exit-{self._process.pid}"
            )
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        assert self._process is not None and self._exited is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeouts.ready_timeout
        while True:
            if self._exited.done():
                raise classify_exit(self._process.tail(), self._process.returncode)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RunnerTimeoutError(
                    f"llama-server was not ready within {self._timeouts.ready_timeout:g}s "
                    "(WORKER_READY_TIMEOUT)"
                )
            status = await self._client.health(
                timeout=min(self._client_limits.connect_timeout, remaining)
            )
            # Re-checked after the await: it may have answered 200 and then died.
            if status == 200 and not self._exited.done():
                return
            # Wake early if the process exits: a crash at start must fail the load at once.
            await asyncio.wait(
                {self._exited},
                timeout=min(self._timeouts.health_poll_interval, max(remaining, 0.0)),
            )

    async def wait_exit(self) -> str:
        if self._process is None or self._exited is None:
            raise RuntimeError("llama-server was never started")
        returncode = await asyncio.shield(self._exited)
        # Gone before the runner is marked FAILED: nothing may connect to a dead server's socket.
        self.socket_path.unlink(missing_ok=True)
        return crash_message(self._process.tail(), returncode)

    async def stop(self) -> None:
        # Every step runs even when an earlier await is cancelled: no orphan process or socket.
        try:
            # Idle keep-alive connections first: llama-server waits for open ones on SIGTERM.
            await self._client.aclose()
        finally:
            try:
                if self._process is not None:
                    await self._process.stop()
                if self._exited is not None:
                    await asyncio.gather(self._exited, return_exceptions=True)
            finally:
                self.socket_path.unlink(missing_ok=True)


class LlamaServerEngine:
    """Runners are llama-server processes fed from the worker's blob cache."""

    def __init__(self, settings: LlamaEngineSettings, blobs: BlobSource) -> None:
        self._settings = settings
        self._blobs = blobs

    def slots(self, requested: int) -> int:
        # 0: llama-server picks (4 slots sharing one KV cache in this build); reported as unknown.
        return requested

    async def prepare(self, launch: RunnerLaunch) -> LlamaServerBackend:
        _, encoded = parse_digest(launch.model_id)
        prefix = f"{self._settings.name_prefix}-{encoded[:12]}"
        runtime = self._settings.runtime_dir
        socket_path = runtime / f"{prefix}-{launch.generation}.sock"
        layers = launch.layers
        gguf_paths = await asyncio.gather(
            *(self._blobs.ensure(layer.digest, layer.size) for layer in layers.gguf)
        )
        template = None
        if layers.chat_template is not None:
            template = await self._blobs.ensure(
                layers.chat_template.digest, layers.chat_template.size
            )
        model_path = (
            gguf_paths[0] if len(gguf_paths) == 1 else _link_shards(socket_path, gguf_paths)
        )
        config = launch.config
        spec = LaunchSpec(
            model_path=model_path,
            socket_path=socket_path,
            context_size=config.context_size,
            parallel=config.parallel,
            chat_template_path=template,
            alias=launch.reference,
            threads=self._settings.llama_threads,
            extra_args=self._settings.llama_args,
            model_args=config.llama_args,
        )
        return LlamaServerBackend(
            [str(self._settings.binary), *build_args(spec)],
            socket_path=socket_path,
            log_path=runtime / "logs" / f"{prefix}.log",
            timeouts=self._settings.runner_timeouts,
            client_limits=self._settings.client_limits,
        )


def _link_shards(socket_path: Path, paths: Sequence[Path]) -> Path:
    """llama.cpp finds the shards of a split GGUF by name: give the blobs those names."""
    bundle = socket_path.with_suffix(".shards")
    bundle.mkdir(parents=True, exist_ok=True)
    total = len(paths)
    links = []
    for index, path in enumerate(paths, start=1):
        link = bundle / f"model-{index:05d}-of-{total:05d}.gguf"
        link.unlink(missing_ok=True)
        link.symlink_to(path)
        links.append(link)
    return links[0]
