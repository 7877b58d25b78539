"""A small real cluster: registry, scheduler, gateway and several workers as processes, each
worker with its own tags, memory budget and llama-servers, on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.health_client import wait_until_serving
from services.stack.processes import ServiceProcess
from tests.support.processes import free_port, wait_until

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class WorkerPlan:
    worker_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    memory_bytes: int = 0


@dataclass
class Cluster:
    root: Path
    environ: dict[str, str]
    registry: ServiceProcess
    scheduler: ServiceProcess
    gateway: ServiceProcess
    workers: dict[str, ServiceProcess]
    gateway_url: str
    registry_address: str
    scheduler_address: str

    def services(self) -> list[ServiceProcess]:
        return [self.registry, self.scheduler, *self.workers.values(), self.gateway]

    async def package(self, gguf: Path, tag: str, *, context_size: int = 0) -> None:
        """Put the GGUF in the store under `tag`; a distinct context size gives a distinct model
        (another manifest digest) over the same weights blob."""
        async with open_channel(self.registry_address) as channel:
            await registry_pb2_grpc.RegistryStub(channel).Package(
                registry_pb2.PackageRequest(
                    gguf_path=str(gguf), tag=tag, context_size=context_size
                ),
                timeout=120.0,
            )

    def kill_worker(self, worker_id: str) -> None:
        """SIGKILL the worker; its llama-servers notice their parent is gone and exit."""
        pid = self.workers[worker_id].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    async def restart_scheduler(self) -> None:
        await self.scheduler.stop(_STOP_TIMEOUT)
        await self.scheduler.start()
        await wait_until_serving(
            self.scheduler_address, timeout=_READY_TIMEOUT, gone=self.scheduler.exit_reason
        )


async def _wait_gateway(url: str, process: ServiceProcess) -> None:
    async with httpx.AsyncClient(timeout=1.0) as client:

        async def answers() -> bool:
            assert process.exit_reason() is None, process.exit_reason()
            try:
                return (await client.get(url + "/")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(answers, what="the gateway to answer", timeout=_READY_TIMEOUT)


async def _workers_registered(url: str, count: int) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:

        async def registered() -> bool:
            response = await client.get(url + "/engines/workers")
            return response.status_code == 200 and (
                sum(1 for w in response.json() if w["alive"]) >= count
            )

        await wait_until(registered, what=f"{count} workers to register", timeout=_READY_TIMEOUT)


@pytest.fixture(scope="module")
async def cluster_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Callable[[Sequence[WorkerPlan], Mapping[str, str] | None], Awaitable[Cluster]]]:
    """Call `await start(plans, env)`; everything started is stopped (by PID) at module end."""
    started: list[Cluster] = []

    async def start(plans: Sequence[WorkerPlan], env: Mapping[str, str] | None = None) -> Cluster:
        root = tmp_path_factory.mktemp("cluster")
        registry_address = f"127.0.0.1:{free_port()}"
        scheduler_address = f"127.0.0.1:{free_port()}"
        port = free_port()
        base = {
            **os.environ,
            "REGISTRY_ADDRESS": registry_address,
            "SCHEDULER_ADDRESS": scheduler_address,
            "SCHEDULER_HEARTBEAT_INTERVAL": "0.5s",
            "SCHEDULER_STATE_PATH": str(root / "scheduler" / "model-configs.json"),
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        logs = root / "logs"
        registry = ServiceProcess(
            "registry",
            "services.registry",
            {**base, "REGISTRY_LISTEN_ADDRESS": registry_address, "MODELS_PATH": str(root / "m")},
            logs / "registry.log",
        )
        scheduler = ServiceProcess(
            "scheduler",
            "services.scheduler",
            {**base, "SCHEDULER_LISTEN_ADDRESS": scheduler_address},
            logs / "scheduler.log",
        )
        workers = {}
        for plan in plans:
            address = f"127.0.0.1:{free_port()}"
            workers[plan.worker_id] = ServiceProcess(
                plan.worker_id,
                "services.worker",
                {
                    **base,
                    "WORKER_ID": plan.worker_id,
                    "WORKER_LISTEN_ADDRESS": address,
                    "WORKER_ADVERTISE_ADDRESS": address,
                    "WORKER_TAGS": ",".join(f"{k}={v}" for k, v in plan.tags.items()),
                    "WORKER_MEMORY_BYTES": str(plan.memory_bytes),
                    "WORKER_CACHE_PATH": str(root / f"cache-{plan.worker_id}"),
                    "WORKER_HEARTBEAT_INTERVAL": "0.5s",
                },
                logs / f"{plan.worker_id}.log",
            )
        gateway = ServiceProcess(
            "gateway",
            "services.gateway",
            {**base, "MODEL_RUNNER_PORT": str(port), "GATEWAY_LISTEN_HOST": "127.0.0.1"},
            logs / "gateway.log",
        )
        cluster = Cluster(
            root=root,
            environ=base,
            registry=registry,
            scheduler=scheduler,
            gateway=gateway,
            workers=workers,
            gateway_url=f"http://127.0.0.1:{port}",
            registry_address=registry_address,
            scheduler_address=scheduler_address,
        )
        started.append(cluster)
        for service in cluster.services():
            await service.start()
        await asyncio.gather(
            wait_until_serving(registry_address, timeout=_READY_TIMEOUT, gone=registry.exit_reason),
            wait_until_serving(
                scheduler_address, timeout=_READY_TIMEOUT, gone=scheduler.exit_reason
            ),
        )
        await _wait_gateway(cluster.gateway_url, gateway)
        await _workers_registered(cluster.gateway_url, len(plans))
        return cluster

    yield start
    for cluster in started:
        for service in reversed(cluster.services()):
            await service.stop(_STOP_TIMEOUT)
