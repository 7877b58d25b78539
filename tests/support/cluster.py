"""A cluster as separate processes: registry, scheduler, workers and gateway, each
`python -m services.<name>` on free loopback ports (metrics included) with a log of its own. The
scheduler integration tests and the fault-injection suite build theirs here.

Every service keeps its address across a restart, so a killed one can be started again in place
and the others find it where they left it. Nothing here waits on a clock: readiness is polled.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.health_client import wait_until_serving
from services.stack.processes import ServiceProcess
from tests.support.processes import free_port, wait_until

__all__ = ["READY_TIMEOUT", "STOP_TIMEOUT", "ProcessCluster", "build_cluster"]

READY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
_PACKAGE_TIMEOUT = 120.0


@dataclass
class ProcessCluster:
    root: Path
    # What every service was started with, before its own addresses.
    environ: dict[str, str]
    registry: ServiceProcess
    scheduler: ServiceProcess
    workers: dict[str, ServiceProcess]
    gateway: ServiceProcess
    registry_address: str
    scheduler_address: str
    gateway_url: str

    def services(self) -> list[ServiceProcess]:
        return [self.registry, self.scheduler, *self.workers.values(), self.gateway]

    async def start(self) -> None:
        """Start every process; returns once the registry and the scheduler serve and the
        gateway answers (workers may still be registering: see wait_workers)."""
        for service in self.services():
            await service.start()
        await asyncio.gather(
            wait_until_serving(
                self.registry_address, timeout=READY_TIMEOUT, gone=self.registry.exit_reason
            ),
            wait_until_serving(
                self.scheduler_address, timeout=READY_TIMEOUT, gone=self.scheduler.exit_reason
            ),
        )
        await self.wait_gateway()

    async def wait_gateway(self) -> None:
        async with httpx.AsyncClient(timeout=1.0) as client:

            async def answers() -> bool:
                reason = self.gateway.exit_reason()
                assert reason is None, reason
                try:
                    return (await client.get(self.gateway_url + "/")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(answers, what="the gateway to answer", timeout=READY_TIMEOUT)

    async def wait_workers(self, count: int) -> None:
        """Until the scheduler lists `count` alive workers."""
        async with httpx.AsyncClient(timeout=5.0) as client:

            async def registered() -> bool:
                response = await client.get(self.gateway_url + "/engines/workers")
                return response.status_code == 200 and (
                    sum(1 for w in response.json() if w["alive"]) >= count
                )

            await wait_until(registered, what=f"{count} workers to register", timeout=READY_TIMEOUT)

    async def package(self, gguf: Path, tag: str, *, context_size: int = 0) -> None:
        """Put the GGUF in the store under `tag`; a distinct context size gives a distinct model
        (another manifest digest) over the same weights blob."""
        async with open_channel(self.registry_address) as channel:
            await registry_pb2_grpc.RegistryStub(channel).Package(
                registry_pb2.PackageRequest(
                    gguf_path=str(gguf), tag=tag, context_size=context_size
                ),
                timeout=_PACKAGE_TIMEOUT,
            )

    async def stop(self) -> None:
        """Stop every process by PID, the gateway first."""
        for service in reversed(self.services()):
            await service.stop(STOP_TIMEOUT)


def build_cluster(
    root: Path,
    workers: Mapping[str, Mapping[str, str]],
    env: Mapping[str, str],
    *,
    gateway_env: Mapping[str, str] | None = None,
) -> ProcessCluster:
    """The processes, not started: one worker per entry of `workers` (worker id -> its own
    extra environment), `env` on top of this process's environment for every service."""
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
        **env,
    }
    logs = root / "logs"
    registry = ServiceProcess(
        "registry",
        "services.registry",
        {
            **base,
            "REGISTRY_LISTEN_ADDRESS": registry_address,
            "REGISTRY_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
            "MODELS_PATH": str(root / "models"),
        },
        logs / "registry.log",
    )
    scheduler = ServiceProcess(
        "scheduler",
        "services.scheduler",
        {
            **base,
            "SCHEDULER_LISTEN_ADDRESS": scheduler_address,
            "SCHEDULER_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        },
        logs / "scheduler.log",
    )
    processes = {}
    for worker_id, worker_env in workers.items():
        address = f"127.0.0.1:{free_port()}"
        processes[worker_id] = ServiceProcess(
            worker_id,
            "services.worker",
            {
                **base,
                "WORKER_ID": worker_id,
                "WORKER_LISTEN_ADDRESS": address,
                "WORKER_ADVERTISE_ADDRESS": address,
                "WORKER_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
                "WORKER_CACHE_PATH": str(root / f"cache-{worker_id}"),
                "WORKER_HEARTBEAT_INTERVAL": "0.5s",
                **worker_env,
            },
            logs / f"{worker_id}.log",
        )
    gateway = ServiceProcess(
        "gateway",
        "services.gateway",
        {
            **base,
            "MODEL_RUNNER_PORT": str(port),
            "GATEWAY_LISTEN_HOST": "127.0.0.1",
            **(gateway_env or {}),
        },
        logs / "gateway.log",
    )
    return ProcessCluster(
        root=root,
        environ=base,
        registry=registry,
        scheduler=scheduler,
        workers=processes,
        gateway=gateway,
        registry_address=registry_address,
        scheduler_address=scheduler_address,
        gateway_url=f"http://127.0.0.1:{port}",
    )
