"""The per-service Prometheus endpoint: GET /metrics from the event loop, refresh hooks, a port
that cannot be bound, and the address setting."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from services.common.env import SettingError, env_address
from services.common.metrics import MetricsServer
from tests.unit.promtool import check_metrics


def _registry() -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    counter = Counter("modelrunner_test_events", "Events.", ["kind"], registry=registry)
    return registry, counter


async def test_serves_the_registry_and_runs_refresh_first() -> None:
    registry, counter = _registry()
    refreshed: list[int] = []

    async def refresh() -> None:
        # What a refresh caches is what the same scrape reports.
        counter.labels("refreshed").inc()
        refreshed.append(1)

    async def broken() -> None:
        raise OSError("disk gone")

    async with MetricsServer("127.0.0.1:0", registry, refresh=[broken, refresh]) as server:
        assert server.port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            text = await client.get("/metrics", timeout=5)
            assert text.status_code == 200
            assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert 'modelrunner_test_events_total{kind="refreshed"} 1.0' in text.text
            check_metrics(text.content)
            open_metrics = await client.get(
                "/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                timeout=5,
            )
            assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
            assert open_metrics.text.rstrip().endswith("# EOF")
            assert (await client.get("/other", timeout=5)).status_code == 404
    assert len(refreshed) == 2
    assert server.port is not None
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


async def test_disabled_serves_nothing() -> None:
    registry, _ = _registry()
    async with MetricsServer(None, registry) as server:
        assert server.port is None


async def test_a_port_in_use_leaves_the_service_running_without_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, _ = _registry()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with caplog.at_level(logging.WARNING, logger="services.common.metrics"):
            async with MetricsServer(address, registry) as server:
                assert server.port is None
    assert f"cannot listen on {address}" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "127.0.0.1:9092"),
        ({"X_METRICS_ADDRESS": "0.0.0.0:9102"}, "0.0.0.0:9102"),
        ({"X_METRICS_ADDRESS": "[::]:9102"}, "[::]:9102"),
        ({"X_METRICS_ADDRESS": "0"}, None),
        ({"X_METRICS_ADDRESS": " "}, None),
    ],
)
def test_env_address(env: dict[str, str], expected: str | None) -> None:
    assert env_address(env, "X_METRICS_ADDRESS", "127.0.0.1:9092") == expected


@pytest.mark.parametrize("raw", ["9102", "host:", ":9102", "host:port", "host:70000"])
def test_env_address_rejects_what_is_not_host_port(raw: str) -> None:
    with pytest.raises(SettingError, match="X_METRICS_ADDRESS"):
        env_address({"X_METRICS_ADDRESS": raw}, "X_METRICS_ADDRESS", "127.0.0.1:9092")
