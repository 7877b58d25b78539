"""`model-runner-registry`: serve the model store over gRPC until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os

from prometheus_client import CollectorRegistry

from services.common.clock import SystemClock
from services.common.env import SettingError
from services.common.grpc_server import run_until_signalled
from services.common.logs import configure_logging
from services.common.metrics import MetricsServer, omit_created_series
from services.registry.app import build_registry
from services.registry.config import RegistrySettings
from services.registry.metrics import RegistryMetrics
from services.registry.store_stats import StoreStats

__all__ = ["main"]


async def _serve(settings: RegistrySettings) -> None:
    clock = SystemClock()
    metrics_registry = CollectorRegistry()
    app = await build_registry(settings, clock=clock, metrics=RegistryMetrics(metrics_registry))
    store_stats = StoreStats(
        settings.models_path, interval=settings.metrics_store_interval, clock=clock
    )
    metrics_registry.register(store_stats)
    metrics_server = MetricsServer(
        settings.metrics_address, metrics_registry, refresh=[store_stats.refresh]
    )
    async with metrics_server:
        await run_until_signalled(app.server, grace=settings.shutdown_grace, cleanup=app.close)


def main() -> None:
    try:
        settings = RegistrySettings.from_env(os.environ)
    except SettingError as exc:
        raise SystemExit(f"model-runner-registry: {exc}") from exc
    configure_logging("registry", settings.log_level, settings.log_format)
    omit_created_series()
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
