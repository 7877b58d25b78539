"""The registry's pull and push metrics against a real docker-registry on loopback: bytes match
the blobs moved (a download shared by concurrent pulls counts once), durations and outcomes are
recorded, failures carry their reason, and the exposition passes `promtool check metrics`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.clock import SystemClock
from services.common.grpc_client import open_channel
from services.registry.app import build_registry
from services.registry.config import RegistrySettings
from services.registry.metrics import RegistryMetrics
from tests.unit.promtool import check_metrics

from .conftest import (
    DockerRegistry,
    Service,
    pull_model,
    push_model,
    remote_settings,
    success_model,
)

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def metered_service(root: Path, metrics: RegistryMetrics) -> AsyncIterator[Service]:
    settings = RegistrySettings(
        models_path=root,
        listen_address="127.0.0.1:0",
        remote=remote_settings(docker_config_path=root / "no-docker-config.json"),
    )
    app = await build_registry(settings, clock=SystemClock(), metrics=metrics)
    port = await app.server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        yield Service(app=app, stub=registry_pb2_grpc.RegistryStub(channel), root=root)
    finally:
        await channel.close()
        await app.server.stop(grace=1.0)
        await app.close()


async def test_pull_and_push_metrics(
    source_root: Path, fresh_registry: DockerRegistry, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    metrics = RegistryMetrics(registry)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    target = f"{fresh_registry.host}/ai/smollm2:v1"
    async with metered_service(source_root, metrics) as source:
        model = await source.stub.InspectModel(
            registry_pb2.InspectModelRequest(reference="ai/smollm2:v1")
        )
        success_model(await push_model(source, "ai/smollm2:v1", target))
    layer_bytes = sum(layer.size for layer in model.layers)
    assert value("modelrunner_registry_push_bytes_total") == (
        layer_bytes + model.config_descriptor.size
    )
    assert value("modelrunner_registry_pushes_total", outcome="success") == 1
    assert value("modelrunner_registry_push_duration_seconds_count") == 1

    async with metered_service(tmp_path / "models", metrics) as empty:
        first, second = await asyncio.gather(pull_model(empty, target), pull_model(empty, target))
        assert success_model(first).id == success_model(second).id == model.id
        # One download served both pulls: its bytes count once.
        assert value("modelrunner_registry_pull_bytes_total") == layer_bytes
        assert value("modelrunner_registry_pulls_total", outcome="success") == 2
        assert value("modelrunner_registry_pull_duration_seconds_count") == 2
        duration = value("modelrunner_registry_pull_duration_seconds_sum")
        assert duration is not None and duration > 0

        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await pull_model(empty, f"{fresh_registry.host}/ai/missing:v1")
        assert excinfo.value.code() is grpc.StatusCode.NOT_FOUND
        assert value("modelrunner_registry_pulls_total", outcome="failure") == 1
        failures = "modelrunner_registry_transfer_failures_total"
        assert value(failures, operation="pull", reason="not_found") == 1
        # A pull of what the store has moves no bytes.
        success_model(await pull_model(empty, target))
        assert value("modelrunner_registry_pull_bytes_total") == layer_bytes
    check_metrics(generate_latest(registry))
