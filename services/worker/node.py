"""One worker wired together: runner pool, Worker gRPC service, membership.

`__main__` runs one node per process; `fleet.py` runs many simulated ones in one process. Both
build them here, so a simulated worker is the real worker with another engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from modelrunner.v1 import worker_pb2_grpc
from services.common.grpc_server import GrpcServer
from services.common.internal_security import InternalSecurity
from services.worker.config import WorkerSettings
from services.worker.engine import Engine
from services.worker.hardware import MemoryGauge
from services.worker.leases import LeaseReleaser
from services.worker.llama_client import ClientLimits
from services.worker.llama_engine import LlamaEngineSettings, RunnerTimeouts
from services.worker.membership import Membership, MembershipTimings, WorkerIdentity
from services.worker.metrics import MetricsLimits, MetricsScraper
from services.worker.pool import PoolSettings, RunnerPool
from services.worker.server import SERVICE_NAME, WorkerServicer
from services.worker.simulated.serving import SimulationSettings
from services.worker.worker_metrics import WorkerMetrics

if TYPE_CHECKING:
    from modelrunner.v1.scheduler_pb2_grpc import SchedulerAsyncStub

__all__ = [
    "WorkerGrpcServer",
    "WorkerNode",
    "llama_engine_settings",
    "simulation_settings",
]

_log = logging.getLogger(__name__)


def llama_engine_settings(
    settings: WorkerSettings, binary: Path, name_prefix: str
) -> LlamaEngineSettings:
    return LlamaEngineSettings(
        binary=binary,
        runtime_dir=settings.runtime_dir,
        name_prefix=name_prefix,
        llama_args=settings.llama_args,
        llama_threads=settings.llama_threads,
        runner_timeouts=RunnerTimeouts(
            ready_timeout=settings.ready_timeout,
            health_poll_interval=settings.health_poll_interval,
            stop_timeout=settings.stop_timeout,
            log_max_bytes=settings.runner_log_max_bytes,
        ),
        client_limits=ClientLimits(
            connect_timeout=settings.connect_timeout,
            stream_idle_timeout=settings.stream_idle_timeout,
            request_timeout=settings.request_timeout,
            max_connections=settings.max_connections,
        ),
    )


def simulation_settings(settings: WorkerSettings) -> SimulationSettings:
    return SimulationSettings(
        load_time=settings.sim_load_time,
        tokens_per_second=settings.sim_tokens_per_second,
        prompt_tokens_per_second=settings.sim_prompt_tokens_per_second,
        max_tokens=settings.sim_max_tokens,
        default_parallel=settings.sim_parallel,
    )


class WorkerGrpcServer(GrpcServer):
    """Registration waits for the bound port: the scheduler may call Load right after it."""

    def __init__(self, address: str, *, security: InternalSecurity | None = None) -> None:
        super().__init__(address, [SERVICE_NAME], security=security)
        self.started = asyncio.Event()

    async def start(self) -> int:
        port = await super().start()
        self.started.set()
        return port


class WorkerNode:
    """Owns its pool, gRPC server and membership task; `close()` stops all of them."""

    def __init__(
        self,
        settings: WorkerSettings,
        engine: Engine,
        scheduler: SchedulerAsyncStub,
        *,
        tags: Mapping[str, str],
        cache_bytes: Callable[[], int] = lambda: 0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._tags = dict(tags)
        changed = asyncio.Event()
        self.pool = RunnerPool(
            PoolSettings(max_runners=settings.max_runners, drain_timeout=settings.drain_timeout),
            engine,
            on_change=changed.set,
            metrics=metrics,
        )
        memory = MemoryGauge(settings.memory_bytes, self.pool.loaded_bytes)
        self.membership = Membership(
            scheduler,
            runners=self.pool.snapshot,
            draining=lambda: self.pool.closed,
            memory_total=memory.total,
            memory_free=memory.free,
            cache_bytes=cache_bytes,
            timings=MembershipTimings(
                heartbeat_interval=settings.heartbeat_interval,
                rpc_timeout=settings.rpc_timeout,
                max_backoff=settings.retry_max_backoff,
            ),
            changed=changed,
        )
        self.server = WorkerGrpcServer(settings.listen_address, security=settings.security)
        scraper = MetricsScraper(
            self.pool,
            MetricsLimits(timeout=settings.metrics_timeout, max_bytes=settings.metrics_max_bytes),
        )
        self.leases = LeaseReleaser(scheduler, settings.rpc_timeout)
        worker_pb2_grpc.add_WorkerServicer_to_server(
            WorkerServicer(self.pool, self.leases, scraper),
            self.server.server,
        )
        self.identity: WorkerIdentity | None = None
        self._membership_task: asyncio.Task[None] | None = None

    def start_membership(self) -> None:
        """Register once the gRPC port is bound, then heartbeat, in a task this node owns."""
        if self._membership_task is not None:
            raise RuntimeError("membership is started once")

        async def register_when_serving() -> None:
            await self.server.started.wait()
            worker_id, address = self._settings.identity(self.server.port)
            self.identity = WorkerIdentity(
                worker_id=worker_id,
                address=address,
                tags=self._tags,
                max_runners=self._settings.max_runners,
            )
            await self.membership.run(self.identity)

        self._membership_task = asyncio.create_task(
            register_when_serving(), name=f"membership-{self._settings.worker_id or 'worker'}"
        )
        self._membership_task.add_done_callback(_log_crash)

    async def stop_membership(self) -> None:
        task, self._membership_task = self._membership_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self, *, farewell: bool = True) -> None:
        """Stop heartbeating and every runner; with `farewell`, tell the scheduler at once.

        The gRPC server is the caller's to stop first (gracefully or not).
        """
        await self.stop_membership()
        await self.pool.close()
        await self.leases.close()
        if farewell:
            await self.membership.farewell()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("scheduler membership stopped: %r", task.exception())
