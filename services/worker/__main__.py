"""`model-runner-worker`: wiring only."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import grpc
from prometheus_client import CollectorRegistry

from modelrunner.v1 import registry_pb2_grpc, scheduler_pb2_grpc
from services.common.grpc_server import run_until_signalled
from services.common.logs import configure_logging
from services.common.metrics import MetricsServer, omit_created_series
from services.worker.binary import resolve_llama_server
from services.worker.blob_cache import BlobCache, FetchLimits
from services.worker.channels import open_control_channel
from services.worker.config import SIMULATED_ENGINE, WorkerSettings
from services.worker.engine import Engine
from services.worker.errors import BinaryNotFoundError
from services.worker.hardware import detect_accelerator
from services.worker.llama_engine import LlamaServerEngine
from services.worker.node import WorkerNode, llama_engine_settings, simulation_settings
from services.worker.runtime_dir import prepare_runtime_dir
from services.worker.simulated.engine import SimulatedEngine
from services.worker.worker_metrics import WorkerCollector, WorkerMetrics

__all__ = ["main"]

_log = logging.getLogger("services.worker")


async def _serve(settings: WorkerSettings) -> None:
    scheduler_channel = open_control_channel(
        settings.scheduler_address, settings.retry_max_backoff, security=settings.security
    )
    scheduler = scheduler_pb2_grpc.SchedulerStub(scheduler_channel)
    metrics_registry = CollectorRegistry()
    metrics = WorkerMetrics(metrics_registry)
    registry_channel: grpc.aio.Channel | None = None
    blobs: BlobCache | None = None
    engine: Engine
    if settings.engine == SIMULATED_ENGINE:
        # A simulated worker plays whatever hardware its tags say, never the host's.
        tags = {"accelerator": "cpu", **settings.tags}
        engine = SimulatedEngine(simulation_settings(settings))
        _log.info("simulated engine: no llama-server, no blob downloads")
    else:
        binary = resolve_llama_server(settings.llama_server_path)
        _log.info("llama-server: %s", binary)
        prepare_runtime_dir(settings.runtime_dir, os.getpid())
        accelerator, gpus = await detect_accelerator()
        tags = {
            "accelerator": accelerator,
            **({"gpus": str(gpus)} if gpus else {}),
            **settings.tags,
        }
        registry_channel = open_control_channel(
            settings.registry_address, settings.retry_max_backoff, security=settings.security
        )
        blobs = BlobCache(
            settings.cache_path,
            registry_pb2_grpc.RegistryStub(registry_channel),
            FetchLimits(
                idle_timeout=settings.blob_idle_timeout,
                fetch_timeout=settings.blob_fetch_timeout,
                max_bytes=settings.cache_max_bytes,
            ),
            metrics,
        )
        engine = LlamaServerEngine(
            llama_engine_settings(settings, binary, name_prefix=str(os.getpid())), blobs
        )
    cache_bytes = blobs.size_bytes if blobs is not None else lambda: 0
    node = WorkerNode(
        settings, engine, scheduler, tags=tags, cache_bytes=cache_bytes, metrics=metrics
    )
    metrics_registry.register(WorkerCollector(node.pool.snapshot, cache_bytes))
    metrics_server = MetricsServer(settings.metrics_address, metrics_registry)
    await metrics_server.start()
    node.start_membership()

    async def cleanup() -> None:
        # Stopping the runners cancels their loads' downloads; the farewell reports them STOPPED.
        await node.close(farewell=True)
        await metrics_server.stop()
        if blobs is not None:
            await blobs.close()
        await scheduler_channel.close()
        if registry_channel is not None:
            await registry_channel.close()
        _log.info("worker stopped; every runner is stopped")

    # Draining first is what sends new requests elsewhere: the runners turn DRAINING and the
    # heartbeat that reports it goes out at once, while in-flight streams finish; cleanup then
    # stops every llama-server, so none outlives the worker.
    await run_until_signalled(
        node.server, grace=settings.shutdown_grace, cleanup=cleanup, drain=node.pool.drain
    )


def main() -> None:
    settings = WorkerSettings.from_env(os.environ)
    configure_logging("worker", settings.log_level, settings.log_format)
    omit_created_series()
    try:
        asyncio.run(_serve(settings))
    except BinaryNotFoundError as exc:
        _log.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
