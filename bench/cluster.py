"""Shared pieces of the scheduler benchmarks (scheduler_assign, affinity, placement_skew).

`ProcessGroup` starts the real services as `python -m services.<name>` processes (the same
`ServiceProcess` the integration tests use), each with its own log file under the group's root,
and stops every one of them by PID (SIGTERM, then SIGKILL) when the `async with` block ends,
whatever happened inside. The rest are small measuring helpers: packaging the SmolLM2 GGUF
under distinct model ids, CPU time of a process from /proc, percentiles and markdown tables.

The scripts import this as `bench.cluster` after putting the repository root on sys.path.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from modelrunner.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.common.grpc_client import open_channel
from services.common.health_client import wait_until_serving
from services.stack.processes import ServiceProcess
from tests.support.processes import free_port, wait_until

__all__ = [
    "DEFAULT_GGUF",
    "REPO",
    "ProcessGroup",
    "cpu_seconds",
    "markdown_table",
    "package",
    "percentile",
    "progress",
    "wait_workers",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GGUF = REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0
_PACKAGE_TIMEOUT = 120.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the tables and summaries."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class ProcessGroup:
    """Services started in order and stopped in reverse order on exit, by PID."""

    root: Path
    base_env: Mapping[str, str] = field(default_factory=dict)
    _started: list[ServiceProcess] = field(default_factory=list)

    async def __aenter__(self) -> ProcessGroup:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop_all()

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {**os.environ, "LOG_LEVEL": "WARNING", **self.base_env, **extra}

    async def start(self, name: str, module: str, extra_env: Mapping[str, str]) -> ServiceProcess:
        service = ServiceProcess(
            name, module, self.env(extra_env), self.root / "logs" / f"{name}.log"
        )
        self._started.append(service)
        await service.start()
        return service

    async def stop(self, service: ServiceProcess) -> None:
        await service.stop(_STOP_TIMEOUT)
        if service in self._started:
            self._started.remove(service)

    async def stop_all(self) -> None:
        while self._started:
            await self._started.pop().stop(_STOP_TIMEOUT)

    async def start_grpc(
        self, name: str, module: str, listen_variable: str, extra_env: Mapping[str, str]
    ) -> tuple[ServiceProcess, str]:
        """A gRPC service on a free loopback port, once its health service says SERVING."""
        address = f"127.0.0.1:{free_port()}"
        service = await self.start(name, module, {**extra_env, listen_variable: address})
        await wait_until_serving(address, timeout=_READY_TIMEOUT, gone=service.exit_reason)
        return service, address

    async def start_registry(self, models_path: Path) -> tuple[ServiceProcess, str]:
        return await self.start_grpc(
            "registry",
            "services.registry",
            "REGISTRY_LISTEN_ADDRESS",
            {"MODELS_PATH": str(models_path)},
        )

    async def start_scheduler(
        self, name: str, registry_address: str, extra_env: Mapping[str, str]
    ) -> tuple[ServiceProcess, str]:
        return await self.start_grpc(
            name,
            "services.scheduler",
            "SCHEDULER_LISTEN_ADDRESS",
            {
                "REGISTRY_ADDRESS": registry_address,
                # Configurations in memory only: every scheduler starts from a clean slate.
                "SCHEDULER_STATE_PATH": "",
                **extra_env,
            },
        )

    async def start_worker(
        self,
        worker_id: str,
        scheduler_address: str,
        registry_address: str,
        extra_env: Mapping[str, str],
    ) -> ServiceProcess:
        """A worker process (real llama-server engine unless `extra_env` says otherwise); it is
        registered once `wait_workers` sees it."""
        address = f"127.0.0.1:{free_port()}"
        return await self.start(
            worker_id,
            "services.worker",
            {
                "WORKER_ID": worker_id,
                "WORKER_LISTEN_ADDRESS": address,
                "WORKER_ADVERTISE_ADDRESS": address,
                "WORKER_CACHE_PATH": str(self.root / f"cache-{worker_id}"),
                "SCHEDULER_ADDRESS": scheduler_address,
                "REGISTRY_ADDRESS": registry_address,
                **extra_env,
            },
        )

    async def start_gateway(self, name: str, extra_env: Mapping[str, str]) -> str:
        """The HTTP gateway on a free port; returns its base URL once it answers."""
        port = free_port()
        service = await self.start(
            name,
            "services.gateway",
            {**extra_env, "MODEL_RUNNER_PORT": str(port), "GATEWAY_LISTEN_HOST": "127.0.0.1"},
        )
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=1.0) as client:

            async def answers() -> bool:
                reason = service.exit_reason()
                if reason is not None:
                    raise RuntimeError(reason)
                try:
                    return (await client.get(url + "/")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(answers, what=f"{name} to answer", timeout=_READY_TIMEOUT)
        return url


async def wait_workers(scheduler_address: str, count: int, *, timeout: float = 60.0) -> None:
    """Until the scheduler lists `count` alive workers."""
    async with open_channel(scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)

        async def registered() -> bool:
            reply = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5.0)
            return sum(1 for worker in reply.workers if worker.alive) >= count

        await wait_until(registered, what=f"{count} workers to register", timeout=timeout)


async def package(
    registry_address: str, gguf: Path, tag: str, *, context_size: int = 0
) -> common_pb2.Model:
    """Put the GGUF in the store under `tag`; a distinct context size gives a distinct model id
    over the same weights blob. `gguf` must be absolute (the registry process reads it)."""
    async with open_channel(registry_address) as channel:
        reply = await registry_pb2_grpc.RegistryStub(channel).Package(
            registry_pb2.PackageRequest(gguf_path=str(gguf), tag=tag, context_size=context_size),
            timeout=_PACKAGE_TIMEOUT,
        )
    return reply.model


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; every column but the first is right-aligned (numbers)."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---", *(["---:"] * (len(headers) - 1))]) + "|",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)
