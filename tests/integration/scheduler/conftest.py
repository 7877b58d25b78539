"""A small real cluster: registry, scheduler, gateway and several workers as processes, each
worker with its own tags, memory budget and llama-servers, on free loopback ports."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from services.common.health_client import wait_until_serving
from tests.support.cluster import READY_TIMEOUT, STOP_TIMEOUT, ProcessCluster, build_cluster


@dataclass(frozen=True)
class WorkerPlan:
    worker_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    memory_bytes: int = 0


@dataclass
class Cluster(ProcessCluster):
    def kill_worker(self, worker_id: str) -> None:
        """SIGKILL the worker; its llama-servers notice their parent is gone and exit."""
        pid = self.workers[worker_id].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    async def restart_scheduler(self) -> None:
        await self.scheduler.stop(STOP_TIMEOUT)
        await self.scheduler.start()
        await wait_until_serving(
            self.scheduler_address, timeout=READY_TIMEOUT, gone=self.scheduler.exit_reason
        )


def _worker_env(plan: WorkerPlan) -> dict[str, str]:
    return {
        "WORKER_TAGS": ",".join(f"{k}={v}" for k, v in plan.tags.items()),
        "WORKER_MEMORY_BYTES": str(plan.memory_bytes),
    }


@pytest.fixture(scope="module")
async def cluster_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Callable[[Sequence[WorkerPlan], Mapping[str, str] | None], Awaitable[Cluster]]]:
    """Call `await start(plans, env)`; everything started is stopped (by PID) at module end."""
    started: list[Cluster] = []

    async def start(plans: Sequence[WorkerPlan], env: Mapping[str, str] | None = None) -> Cluster:
        processes = build_cluster(
            tmp_path_factory.mktemp("cluster"),
            {plan.worker_id: _worker_env(plan) for plan in plans},
            env or {},
        )
        cluster = Cluster(**vars(processes))
        started.append(cluster)
        await cluster.start()
        await cluster.wait_workers(len(plans))
        return cluster

    yield start
    for cluster in started:
        await cluster.stop()
