"""`model-runner-scheduler`: wiring only."""

from __future__ import annotations

import asyncio
import os

from modelrunner.v1 import scheduler_pb2_grpc
from services.common.clock import SystemClock
from services.common.grpc_server import GrpcServer, run_until_signalled
from services.common.logs import configure_logging
from services.scheduler.app import SchedulerApp
from services.scheduler.config import SchedulerSettings
from services.scheduler.resolver import GrpcModelResolver
from services.scheduler.resolver_cache import CachingModelResolver
from services.scheduler.server import SERVICE_NAME, SchedulerServicer
from services.scheduler.workers import GrpcWorkerClient

__all__ = ["main"]


async def serve(settings: SchedulerSettings) -> None:
    clock = SystemClock()
    resolver = CachingModelResolver(
        GrpcModelResolver(settings.registry_address),
        ttl=settings.resolve_cache_ttl,
        max_entries=settings.resolve_cache_entries,
        clock=clock,
    )
    app = SchedulerApp(settings, resolver=resolver, workers=GrpcWorkerClient(), clock=clock)
    server = GrpcServer(settings.listen_address, [SERVICE_NAME])
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(
        SchedulerServicer(app.control, settings), server.server
    )
    async with app:
        await run_until_signalled(server, grace=settings.shutdown_grace)


def main() -> None:
    settings = SchedulerSettings.from_env(os.environ)
    configure_logging("scheduler", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
