"""`model-runner-gateway`: settings from the environment, then uvicorn (uvloop + httptools).

uvicorn owns the signals: SIGTERM/SIGINT stop accepting connections, let in-flight responses
finish for GATEWAY_SHUTDOWN_GRACE seconds, then run the lifespan shutdown that closes the
gRPC channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import uvicorn

from services.common.logs import configure_logging
from services.common.metrics import omit_created_series
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.header_timeout import HeaderTimeoutConfig

__all__ = ["build_server", "main"]


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the signal after a clean drain.

    Stock uvicorn re-raises SIGTERM once it has shut down, so the process would end "killed by
    SIGTERM" even after every response finished; like the other services, this one exits 0. A
    second SIGINT still forces an immediate exit (uvicorn's handle_exit).
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def build_server(settings: GatewaySettings) -> uvicorn.Server:
    config = HeaderTimeoutConfig(
        create_app(settings),
        host=settings.listen_host,
        port=settings.port,
        # MODEL_RUNNER_SOCK: a Unix socket replaces the TCP listener, as in DMR.
        uds=settings.socket_path,
        loop="uvloop",
        http="httptools",
        header_timeout=settings.header_timeout,
        lifespan="on",
        log_level=settings.log_level.lower(),
        # Logging is already configured for the whole process; keep uvicorn's format out of it.
        log_config=None,
        access_log=settings.access_log,
        limit_concurrency=settings.max_concurrency,
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
        timeout_graceful_shutdown=round(settings.shutdown_grace),
        server_header=False,
    )
    return _Server(config)


def main() -> None:
    settings = GatewaySettings.from_env(os.environ)
    configure_logging("gateway", settings.log_level, settings.log_format)
    omit_created_series()
    build_server(settings).run()


if __name__ == "__main__":
    main()
