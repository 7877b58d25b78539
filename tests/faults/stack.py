"""A real stack for fault injection: registry, scheduler, two workers (real llama-server and
SmolLM2, small context, two slots each, one replica of the model on each) and a gateway, each a
separate `python -m services.<name>` process on free loopback ports, stopped by PID at the end.

The processes come from tests/support/cluster.py; this adds what the fault scenarios need.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.health_client import wait_until_serving
from services.stack.processes import ServiceProcess
from tests.support.cluster import READY_TIMEOUT, STOP_TIMEOUT, ProcessCluster, build_cluster
from tests.support.processes import child_pids, is_alive, wait_until

__all__ = ["MODEL", "WORKERS", "FaultStack", "StackPlan", "one_token_chat", "running_stack"]

MODEL = "ai/smollm2"
WORKERS = ("w1", "w2")
_RPC_TIMEOUT = 120.0
_HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class StackPlan:
    root: Path
    gguf: Path
    context_size: int = 1024
    slots: int = 2
    shutdown_grace: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class FaultStack(ProcessCluster):
    plan: StackPlan

    @staticmethod
    def kill(service: ServiceProcess, signum: signal.Signals = signal.SIGKILL) -> None:
        assert service.pid is not None and service.exit_reason() is None, service.name
        os.kill(service.pid, signum)

    def llama_servers(self, worker_id: str) -> set[int]:
        """PIDs of the llama-server children of a worker."""
        pid = self.workers[worker_id].pid
        if pid is None:
            return set()
        found = set()
        for child in child_pids(pid):
            with contextlib.suppress(OSError):
                if b"llama-server" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(child)
        return found

    async def restart(self, service: ServiceProcess) -> None:
        """Start a service that exited (or stop it first), then wait until it serves."""
        await service.stop(STOP_TIMEOUT)
        await service.wait()
        await service.start()
        if service is self.gateway:
            await self.wait_gateway()
        elif service is self.registry:
            await wait_until_serving(
                self.registry_address, timeout=READY_TIMEOUT, gone=service.exit_reason
            )
        elif service is self.scheduler:
            await wait_until_serving(
                self.scheduler_address, timeout=READY_TIMEOUT, gone=service.exit_reason
            )

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.gateway_url, timeout=_HTTP_TIMEOUT) as client:
            response = await client.get(path)
            response.raise_for_status()
            return response.json()

    async def replicas(self) -> set[str]:
        """Workers that are alive and hold a READY runner of the model."""
        alive = {w["worker_id"] for w in await self.get("/engines/workers") if w["alive"]}
        return {
            row["worker_id"]
            for row in await self.get("/engines/ps")
            if row["model_name"] in (MODEL, f"{MODEL}:latest")
            and row["state"] == "ready"
            and row["worker_id"] in alive
        }

    async def leases_held(self) -> int:
        """Leases the scheduler holds on every runner (0 once every request has ended)."""
        return sum(int(row.get("in_flight", 0)) for row in await self.get("/engines/ps"))

    async def wait_ready(self) -> None:
        """Until every worker is alive and serves a replica of the model (a request starts the
        first one; min-replicas the second)."""
        for service in self.services():
            reason = service.exit_reason()
            assert reason is None, reason
        async with httpx.AsyncClient(base_url=self.gateway_url, timeout=_RPC_TIMEOUT) as client:

            async def answered() -> bool:
                # 503 while a restarted service is not reachable yet (gRPC reconnect backoff).
                warm = await one_token_chat(client, MODEL)
                assert warm.status_code in (200, 503), warm.text
                return warm.status_code == 200

            await wait_until(answered, what="a chat request to succeed", timeout=READY_TIMEOUT)

        async def both() -> bool:
            try:
                return await self.replicas() == set(WORKERS)
            except httpx.HTTPError:
                return False

        await wait_until(both, what="a ready replica on every worker", timeout=READY_TIMEOUT)

    async def verify_store(self) -> registry_pb2.VerifyResponse:
        async with open_channel(self.registry_address) as channel:
            reply: registry_pb2.VerifyResponse = await registry_pb2_grpc.RegistryStub(
                channel
            ).Verify(registry_pb2.VerifyRequest(), timeout=_RPC_TIMEOUT)
            return reply

    async def package(self, gguf: Path, tag: str, *, context_size: int = 0) -> None:
        """Package with the plan's context size unless told otherwise."""
        await super().package(gguf, tag, context_size=context_size or self.plan.context_size)

    def orphans(self, pids: set[int]) -> set[int]:
        return {pid for pid in pids if is_alive(pid)}


async def one_token_chat(client: httpx.AsyncClient, model: str) -> httpx.Response:
    """A one-token chat: enough for the model to be loaded somewhere and answer."""
    return await client.post(
        "/engines/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
    )


def _build(plan: StackPlan) -> FaultStack:
    root = plan.root
    processes = build_cluster(
        root,
        {worker_id: {"WORKER_RUNTIME_DIR": str(root / f"rt-{worker_id}")} for worker_id in WORKERS},
        {
            "SCHEDULER_DEFAULT_PARALLEL": str(plan.slots),
            "SCHEDULER_DEFAULT_CONTEXT_SIZE": str(plan.context_size),
            "MODEL_KEEP_ALIVE": "30m",
            # Two llama-servers share the cores with everything else.
            "WORKER_LLAMA_THREADS": "1",
            **plan.env,
        },
        gateway_env={"GATEWAY_SHUTDOWN_GRACE": f"{plan.shutdown_grace:g}s"},
    )
    return FaultStack(**vars(processes), plan=plan)


@contextlib.asynccontextmanager
async def running_stack(plan: StackPlan) -> AsyncIterator[FaultStack]:
    """The whole stack, the model packaged and a replica ready on each worker; every process
    (llama-servers included, through their workers) is stopped when the block exits."""
    stack = _build(plan)
    try:
        await stack.start()
        await stack.package(plan.gguf, MODEL)
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=_HTTP_TIMEOUT) as client:
            response = await client.post(
                "/engines/_configure",
                json={"model": MODEL, "min-replicas": len(WORKERS), "max-replicas": len(WORKERS)},
            )
            assert response.status_code == 202, response.text
        await stack.wait_ready()
        yield stack
    finally:
        await stack.stop()
