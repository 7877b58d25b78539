"""`model-runner-scheduler`: wiring only."""

from __future__ import annotations

import asyncio
import os

from prometheus_client import CollectorRegistry

from modelrunner.v1 import scheduler_pb2_grpc
from services.common.clock import SystemClock
from services.common.grpc_server import GrpcServer, run_until_signalled
from services.common.logs import configure_logging
from services.common.metrics import MetricsServer, omit_created_series
from services.scheduler.app import SchedulerApp
from services.scheduler.config import SchedulerSettings
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.metrics_collector import SchedulerCollector
from services.scheduler.resolver import GrpcModelResolver
from services.scheduler.resolver_cache import CachingModelResolver
from services.scheduler.server import SERVICE_NAME, SchedulerServicer
from services.scheduler.workers import GrpcWorkerClient

__all__ = ["main"]


async def serve(settings: SchedulerSettings) -> None:
    clock = SystemClock()
    resolver = CachingModelResolver(
        GrpcModelResolver(settings.registry_address, security=settings.security),
        ttl=settings.resolve_cache_ttl,
        max_entries=settings.resolve_cache_entries,
        clock=clock,
    )
    metrics_registry = CollectorRegistry()
    app = SchedulerApp(
        settings,
        resolver=resolver,
        workers=GrpcWorkerClient(security=settings.security),
        clock=clock,
        metrics=SchedulerMetrics(metrics_registry),
    )
    metrics_registry.register(SchedulerCollector(app.control))
    server = GrpcServer(settings.listen_address, [SERVICE_NAME], security=settings.security)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(
        SchedulerServicer(app.control, settings), server.server
    )
    async with app, MetricsServer(settings.metrics_address, metrics_registry):
        await run_until_signalled(server, grace=settings.shutdown_grace)


def main() -> None:
    settings = SchedulerSettings.from_env(os.environ)
    configure_logging("scheduler", settings.log_level, settings.log_format)
    omit_created_series()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
