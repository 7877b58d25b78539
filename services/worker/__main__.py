"""`model-runner-worker`: wiring only."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from modelrunner.v1 import registry_pb2_grpc, scheduler_pb2_grpc, worker_pb2_grpc
from services.common.grpc_server import GrpcServer, run_until_signalled
from services.common.logs import configure_logging
from services.worker.binary import resolve_llama_server
from services.worker.blob_cache import BlobCache, FetchLimits
from services.worker.channels import open_control_channel
from services.worker.config import WorkerSettings
from services.worker.errors import BinaryNotFoundError
from services.worker.hardware import MemoryGauge, detect_accelerator
from services.worker.leases import LeaseReleaser
from services.worker.llama_client import ClientLimits
from services.worker.membership import Membership, MembershipTimings, WorkerIdentity
from services.worker.metrics import MetricsLimits, MetricsScraper
from services.worker.pool import PoolSettings, RunnerPool
from services.worker.runner import RunnerTimeouts
from services.worker.runtime_dir import prepare_runtime_dir
from services.worker.server import SERVICE_NAME, WorkerServicer

__all__ = ["main"]

_log = logging.getLogger("services.worker")


class _WorkerGrpcServer(GrpcServer):
    """Registration waits for the bound port: the scheduler may call Load right after it."""

    def __init__(self, address: str) -> None:
        super().__init__(address, [SERVICE_NAME])
        self.started = asyncio.Event()

    async def start(self) -> int:
        port = await super().start()
        self.started.set()
        return port


async def _serve(settings: WorkerSettings) -> None:
    binary = resolve_llama_server(settings.llama_server_path)
    _log.info("llama-server: %s", binary)
    prepare_runtime_dir(settings.runtime_dir, os.getpid())
    accelerator, gpus = await detect_accelerator()
    tags = {"accelerator": accelerator, **({"gpus": str(gpus)} if gpus else {}), **settings.tags}

    registry_channel = open_control_channel(settings.registry_address, settings.retry_max_backoff)
    scheduler_channel = open_control_channel(settings.scheduler_address, settings.retry_max_backoff)
    scheduler = scheduler_pb2_grpc.SchedulerStub(scheduler_channel)
    blobs = BlobCache(
        settings.cache_path,
        registry_pb2_grpc.RegistryStub(registry_channel),
        FetchLimits(
            idle_timeout=settings.blob_idle_timeout,
            fetch_timeout=settings.blob_fetch_timeout,
            max_bytes=settings.cache_max_bytes,
        ),
    )
    changed = asyncio.Event()
    pool = RunnerPool(
        PoolSettings(
            binary=binary,
            runtime_dir=settings.runtime_dir,
            name_prefix=str(os.getpid()),
            llama_args=settings.llama_args,
            llama_threads=settings.llama_threads,
            max_runners=settings.max_runners,
            drain_timeout=settings.drain_timeout,
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
        ),
        blobs,
        on_change=changed.set,
    )
    memory = MemoryGauge(settings.memory_bytes, pool.loaded_bytes)
    membership = Membership(
        scheduler,
        runners=pool.snapshot,
        memory_total=memory.total,
        memory_free=memory.free,
        timings=MembershipTimings(
            heartbeat_interval=settings.heartbeat_interval,
            rpc_timeout=settings.rpc_timeout,
            max_backoff=settings.retry_max_backoff,
        ),
        changed=changed,
    )
    server = _WorkerGrpcServer(settings.listen_address)
    metrics = MetricsScraper(
        pool, MetricsLimits(timeout=settings.metrics_timeout, max_bytes=settings.metrics_max_bytes)
    )
    worker_pb2_grpc.add_WorkerServicer_to_server(
        WorkerServicer(pool, LeaseReleaser(scheduler, settings.rpc_timeout), metrics),
        server.server,
    )

    async def register_when_serving() -> None:
        await server.started.wait()
        worker_id, address = settings.identity(server.port)
        await membership.run(WorkerIdentity(worker_id=worker_id, address=address, tags=tags))

    membership_task = asyncio.create_task(register_when_serving(), name="membership")
    membership_task.add_done_callback(_log_crash)

    async def cleanup() -> None:
        membership_task.cancel()
        await asyncio.gather(membership_task, return_exceptions=True)
        await pool.close()
        await blobs.close()
        await membership.farewell()
        await scheduler_channel.close()
        await registry_channel.close()
        _log.info("worker stopped; every llama-server is stopped")

    await run_until_signalled(server, grace=settings.shutdown_grace, cleanup=cleanup)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("scheduler membership stopped: %r", task.exception())


def main() -> None:
    settings = WorkerSettings.from_env(os.environ)
    configure_logging("worker", settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except BinaryNotFoundError as exc:
        _log.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
