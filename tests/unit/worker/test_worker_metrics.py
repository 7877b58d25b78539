"""The worker's own metrics move with what the real pool (stand-in llama-server processes) and the
real blob cache (in-process fake registry) do; the exposition passes `promtool check metrics`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.common.digest import sha256_digest
from services.common.env import SettingError
from services.worker.blob_cache import BlobCache, FetchLimits
from services.worker.config import WorkerSettings
from services.worker.engine import Endpoint
from services.worker.errors import BlobFetchError, ModelLoadError, RunnerStoppedError, UpstreamError
from services.worker.pool import RunnerPool
from services.worker.runner import RunnerState
from services.worker.worker_metrics import WorkerCollector, WorkerMetrics
from tests.unit.promtool import check_metrics
from tests.unit.worker.fake_registry import FakeRegistry, running_registry
from tests.unit.worker.support import FakeBlobs, eventually, make_pool

GOOD = b"GGUF fake model\n"
NEVER_READY = b"SLOW\n"
CRASHING = b"CRASH llama_model_load: error loading model: bad tensor data\n"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def starts(registry: CollectorRegistry, outcome: str) -> float:
    return value(registry, "modelrunner_worker_runner_starts_total", outcome=outcome)


async def _stream_all(pool: RunnerPool, model_id: str, body: bytes) -> None:
    async with (
        pool.acquire(model_id) as runner,
        runner.client.forward(Endpoint.CHAT_COMPLETIONS, body, stream=True) as upstream,
    ):
        async for _ in upstream.chunks():
            pass


async def test_starts_crashes_restarts_requests_and_upstream_errors(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    registry = CollectorRegistry()
    pool = make_pool(fake_binary, runtime_dir, blobs, metrics=WorkerMetrics(registry))
    registry.register(WorkerCollector(pool.snapshot, lambda: 1234))
    try:
        spec = blobs.model(GOOD)
        first = await pool.load(spec, "ai/fake")
        assert starts(registry, "ready") == 1
        assert value(registry, "modelrunner_worker_load_duration_seconds_count") == 1
        assert value(registry, "modelrunner_worker_runners", state="ready") == 1
        async with pool.acquire(spec.model_id):
            in_flight = value(registry, "modelrunner_worker_requests_in_flight", model="ai/fake")
            assert in_flight == 1
        assert value(registry, "modelrunner_worker_requests_in_flight", model="ai/fake") == 0
        assert value(registry, "modelrunner_worker_memory_reserved_bytes") == len(GOOD)
        assert value(registry, "modelrunner_worker_blob_cache_bytes") == 1234

        body = json.dumps(
            {
                "messages": [{"role": "user", "content": "a b c"}],
                "stream": True,
                "fake": {"crash_after": 1},
            }
        ).encode()
        with pytest.raises(UpstreamError):
            await _stream_all(pool, spec.model_id, body)
        lost = value(registry, "modelrunner_worker_upstream_errors_total", reason="connection_lost")
        assert lost == 1
        await eventually(lambda: pool.snapshot()[0].state is RunnerState.FAILED, what="FAILED")
        assert value(registry, "modelrunner_worker_runner_crashes_total") == 1
        assert value(registry, "modelrunner_worker_runners", state="failed") == 1

        second = await pool.load(spec, "ai/fake")
        assert second.pid != first.pid
        assert value(registry, "modelrunner_worker_runner_restarts_total") == 1
        assert starts(registry, "ready") == 2
        assert second.pid is not None
        os.kill(second.pid, signal.SIGKILL)
        await eventually(
            lambda: value(registry, "modelrunner_worker_runner_crashes_total") == 2,
            what="the second crash",
        )

        with pytest.raises(ModelLoadError):
            await pool.load(blobs.model(CRASHING), "ai/broken")
        assert starts(registry, "failed") == 1
        # A start that fails is not a crash of a serving runner.
        assert value(registry, "modelrunner_worker_runner_crashes_total") == 2

        slow = blobs.model(NEVER_READY)
        loading = asyncio.create_task(pool.load(slow, "ai/slow"))
        await eventually(
            lambda: value(registry, "modelrunner_worker_runners", state="starting") == 1,
            what="the slow runner to start",
        )
        assert await pool.unload(slow.model_id)
        with pytest.raises(RunnerStoppedError):
            await loading
        assert starts(registry, "cancelled") == 1
        assert value(registry, "modelrunner_worker_load_duration_seconds_count") == 2
        check_metrics(generate_latest(registry))
    finally:
        await pool.close()


async def test_blob_fetches_count_bytes_failures_and_durations(tmp_path: Path) -> None:
    data = os.urandom(300 * 1024 + 17)
    digest = sha256_digest(data)
    fake = FakeRegistry(blobs={digest: data}, fail_after=128 * 1024)
    registry = CollectorRegistry()
    async with running_registry(fake) as stub:
        cache = BlobCache(
            tmp_path,
            stub,
            FetchLimits(idle_timeout=5.0, fetch_timeout=30.0),
            WorkerMetrics(registry),
        )
        try:
            with pytest.raises(BlobFetchError):
                await cache.ensure(digest, len(data))
            assert value(registry, "modelrunner_worker_blob_fetches_total", outcome="failure") == 1
            assert value(registry, "modelrunner_worker_blob_fetch_bytes_total") == 128 * 1024
            fake.fail_after = None
            await cache.ensure(digest, len(data))
            # The resumed download fetched only the rest: every byte was received once.
            assert value(registry, "modelrunner_worker_blob_fetch_bytes_total") == len(data)
            assert value(registry, "modelrunner_worker_blob_fetches_total", outcome="success") == 1
            assert value(registry, "modelrunner_worker_blob_fetch_duration_seconds_count") == 1
            await cache.ensure(digest, len(data))
            assert value(registry, "modelrunner_worker_blob_fetches_total", outcome="success") == 1
        finally:
            await cache.close()
    check_metrics(generate_latest(registry))


def test_metrics_and_log_settings() -> None:
    defaults = WorkerSettings.from_env({})
    assert (defaults.metrics_address, defaults.log_format) == ("127.0.0.1:9093", "json")
    custom = WorkerSettings.from_env({"WORKER_METRICS_ADDRESS": "0", "LOG_FORMAT": "text"})
    assert (custom.metrics_address, custom.log_format) == (None, "text")
    assert (
        WorkerSettings.from_env({"WORKER_METRICS_ADDRESS": "0.0.0.0:9100"}).metrics_address
        == "0.0.0.0:9100"
    )
    with pytest.raises(SettingError, match="WORKER_METRICS_ADDRESS"):
        WorkerSettings.from_env({"WORKER_METRICS_ADDRESS": "nowhere"})
    with pytest.raises(SettingError, match="LOG_FORMAT"):
        WorkerSettings.from_env({"LOG_FORMAT": "xml"})
