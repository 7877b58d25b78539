"""Prometheus exposition of a service's own metrics, on its own port.

Each service builds one `CollectorRegistry` in `__main__` (never prometheus_client's global
default registry) and passes it to what records metrics; `MetricsServer` serves it at
`GET /metrics` (text format 0.0.4, or OpenMetrics when the scraper asks for it).

The server runs on the service's event loop, not in prometheus_client's HTTP thread: gauges are
read at scrape time by custom collectors from state that only the loop mutates (queues, runners,
leases), and reading that from another thread could see a dict change size mid-iteration.
Scrape-time reads also keep the hot paths free of gauge bookkeeping. Work too slow for a scrape
(walking a store on disk) goes in a `refresh` coroutine, awaited before the collectors run, that
caches its answer.

A port that cannot be bound leaves the service running without its endpoint and says so in the
log: several services on one host would otherwise fail to start over a default port.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from services.common.env import parse_host_port

__all__ = [
    "DURATION_BUCKETS",
    "LATENCY_BUCKETS",
    "MetricsServer",
    "Refresh",
    "omit_created_series",
]

_log = logging.getLogger(__name__)

# Seconds. Request-path latencies: sub-millisecond routing up to a cold load behind a queue.
LATENCY_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
# Seconds. Loads and transfers: a cached blob up to a multi-GB download.
DURATION_BUCKETS = (
    *(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)

Refresh = Callable[[], Awaitable[None]]


def omit_created_series() -> None:
    """Leave out the `*_created` series: they double the counters' lines for a timestamp nobody
    graphs. A process-wide switch of prometheus_client, so `__main__` calls it, once."""
    disable_created_metrics()  # type: ignore[no-untyped-call]


class MetricsServer:
    """`GET /metrics` for one registry on `address` (host:port; None: disabled)."""

    def __init__(
        self,
        address: str | None,
        registry: CollectorRegistry,
        *,
        refresh: Sequence[Refresh] = (),
    ) -> None:
        self._address = address
        self._registry = registry
        self._refresh = tuple(refresh)
        self._runner: web.AppRunner | None = None
        # The bound port once started (useful with port 0); None when disabled or not bound.
        self.port: int | None = None

    async def start(self) -> int | None:
        if self._address is None:
            return None
        host, port = parse_host_port(self._address)
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            _log.warning("metrics endpoint disabled: cannot listen on %s: %s", self._address, exc)
            return None
        self._runner = runner
        self.port = _bound_port(runner)
        _log.info("metrics on http://%s/metrics", _display(host, self.port))
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve(self, request: web.Request) -> web.Response:
        for refresh in self._refresh:
            try:
                await refresh()
            except Exception:  # a stale figure is better than no metrics at all
                _log.exception("refreshing metrics failed")
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self._registry), headers={"Content-Type": content_type})


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise OSError("the metrics server has no TCP address")


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
