"""`model-runner-registry`: serve the model store over gRPC until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os

from services.common.clock import SystemClock
from services.common.env import SettingError
from services.common.grpc_server import run_until_signalled
from services.common.logs import configure_logging
from services.registry.app import build_registry
from services.registry.config import RegistrySettings

__all__ = ["main"]


async def _serve(settings: RegistrySettings) -> None:
    app = await build_registry(settings, clock=SystemClock())
    await run_until_signalled(app.server, grace=settings.shutdown_grace, cleanup=app.close)


def main() -> None:
    try:
        settings = RegistrySettings.from_env(os.environ)
    except SettingError as exc:
        raise SystemExit(f"model-runner-registry: {exc}") from exc
    configure_logging("registry", settings.log_level)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
