"""The registry's metrics through its real gRPC service (Package, PackageUpload), the store walk
behind the size gauges, and the byte meter that pulls share. Pull and push against a real
upstream registry are in tests/integration/registry/test_registry_metrics.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.clock import SystemClock
from services.common.env import SettingError
from services.common.grpc_client import open_channel
from services.registry.app import build_registry
from services.registry.config import RegistrySettings
from services.registry.errors import (
    InvalidModelFile,
    RegistryUnavailable,
    RemoteDigestMismatch,
    RemoteNotFound,
    UnsupportedMediaType,
)
from services.registry.metrics import DownloadMeter, RegistryMetrics, failure_reason
from services.registry.store_stats import StoreStats, measure_store
from tests.unit.promtool import check_metrics
from tests.unit.registry.conftest import write_tiny_gguf


class StepClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def serving(
    root: Path, registry: CollectorRegistry
) -> AsyncIterator[registry_pb2_grpc.RegistryAsyncStub]:
    settings = RegistrySettings(models_path=root, listen_address="127.0.0.1:0")
    app = await build_registry(settings, clock=SystemClock(), metrics=RegistryMetrics(registry))
    port = await app.server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        yield registry_pb2_grpc.RegistryStub(channel)
    finally:
        await channel.close()
        await app.server.stop(grace=1.0)
        await app.close()


def packages(registry: CollectorRegistry, source: str, outcome: str) -> float | None:
    return registry.get_sample_value(
        "modelrunner_registry_packages_total", {"source": source, "outcome": outcome}
    )


def _upload(data: bytes, tag: str) -> list[registry_pb2.PackageUploadRequest]:
    return [
        registry_pb2.PackageUploadRequest(
            header=registry_pb2.PackageUploadHeader(tag=tag, gguf_size=len(data))
        ),
        *(
            registry_pb2.PackageUploadRequest(gguf_chunk=data[i : i + 4096])
            for i in range(0, len(data), 4096)
        ),
        registry_pb2.PackageUploadRequest(end=True),
    ]


async def test_packages_uploads_and_the_store_size(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    root = tmp_path / "models"
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    async with serving(root, registry) as stub:
        await stub.Package(registry_pb2.PackageRequest(gguf_path=str(gguf), tag="ai/a"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Package(
                registry_pb2.PackageRequest(gguf_path=str(tmp_path / "missing.gguf"), tag="ai/b"),
                timeout=30,
            )
        assert packages(registry, "path", "success") == 1
        assert packages(registry, "path", "failure") == 1

        other = write_tiny_gguf(tmp_path / "other.gguf", seed=1.0).read_bytes()
        await stub.PackageUpload(iter(_upload(other, "ai/c")), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.PackageUpload(iter(_upload(b"not a gguf at all", "ai/d")), timeout=30)
        assert packages(registry, "upload", "success") == 1
        assert packages(registry, "upload", "failure") == 1
        uploaded = registry.get_sample_value("modelrunner_registry_upload_bytes_total")
        assert uploaded == len(other) + len(b"not a gguf at all")

    clock = StepClock()
    stats = StoreStats(root, interval=30.0, clock=clock)
    registry.register(stats)
    assert registry.get_sample_value("modelrunner_registry_store_blobs") is None
    await stats.refresh()
    blobs = list((root / "blobs" / "sha256").iterdir())
    assert registry.get_sample_value("modelrunner_registry_store_blobs") == len(blobs)
    size = sum(path.stat().st_size for path in blobs)
    assert registry.get_sample_value("modelrunner_registry_store_size_bytes") == size
    check_metrics(generate_latest(registry))

    partial = root / "blobs" / "sha256" / ("0" * 64 + ".incomplete")
    partial.write_bytes(b"x" * 10)
    await stats.refresh()
    # Within the interval the last walk is reused: no disk walk per scrape.
    assert registry.get_sample_value("modelrunner_registry_store_incomplete_bytes") == 0
    clock.now += 31.0
    await stats.refresh()
    assert registry.get_sample_value("modelrunner_registry_store_incomplete_bytes") == 10
    assert registry.get_sample_value("modelrunner_registry_store_blobs") == len(blobs)


def test_measure_store_of_a_store_not_yet_created(tmp_path: Path) -> None:
    usage = measure_store(tmp_path / "nowhere")
    assert (usage.blob_bytes, usage.blobs, usage.incomplete_bytes) == (0, 0, 0)


def _meter() -> tuple[DownloadMeter, CollectorRegistry]:
    registry = CollectorRegistry()
    return DownloadMeter(Counter("received", "Bytes.", registry=registry)), registry


def _received(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("received_total")


def test_download_meter_counts_a_shared_download_once() -> None:
    meter, registry = _meter()
    with meter.watching("sha256:a"), meter.watching("sha256:a"):
        # Two pulls listen to one download: each hears every count.
        for done in (0, 0, 100, 100, 250, 250):
            meter.report("sha256:a", done)
        assert _received(registry) == 250
    # Forgotten once nobody watches: a later download of the digest starts afresh.
    with meter.watching("sha256:a"):
        meter.report("sha256:a", 0)
        meter.report("sha256:a", 40)
    assert _received(registry) == 290


def test_download_meter_skips_resumed_bytes_and_counts_a_restart() -> None:
    meter, registry = _meter()
    with meter.watching("sha256:b"):
        meter.report("sha256:b", 700)  # resumed: 700 bytes were on disk already
        meter.report("sha256:b", 1000)
        meter.report("sha256:b", 0)  # the retry's server ignored the Range: from the start
        meter.report("sha256:b", 1200)
    assert _received(registry) == 300 + 1200


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RemoteNotFound("x"), "not_found"),
        (UnsupportedMediaType("x"), "unsupported_media_type"),
        (InvalidModelFile("x"), "invalid_argument"),
        (RegistryUnavailable("x"), "unavailable"),
        (RemoteDigestMismatch("sha256:a", "sha256:b"), "digest_mismatch"),
        (OSError("disk full"), "io_error"),
        (GeneratorExit(), "cancelled"),
        (RuntimeError("bug"), "internal"),
    ],
)
def test_failure_reason(error: BaseException, reason: str) -> None:
    assert failure_reason(error) == reason


def test_metrics_and_log_settings() -> None:
    defaults = RegistrySettings.from_env({})
    assert (defaults.metrics_address, defaults.log_format) == ("127.0.0.1:9091", "json")
    custom = RegistrySettings.from_env({"REGISTRY_METRICS_ADDRESS": "0", "LOG_FORMAT": "text"})
    assert (custom.metrics_address, custom.log_format) == (None, "text")
    assert (
        RegistrySettings.from_env({"REGISTRY_METRICS_ADDRESS": "0.0.0.0:9100"}).metrics_address
        == "0.0.0.0:9100"
    )
    with pytest.raises(SettingError, match="REGISTRY_METRICS_ADDRESS"):
        RegistrySettings.from_env({"REGISTRY_METRICS_ADDRESS": "nowhere"})
    with pytest.raises(SettingError, match="LOG_FORMAT"):
        RegistrySettings.from_env({"LOG_FORMAT": "xml"})
