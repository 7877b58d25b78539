"""MetricsScraper against the stand-in llama-server: every READY runner, concurrently, faults left out."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from services.worker.errors import RunnerStartError, RunnerStoppedError
from services.worker.llama_client import Endpoint
from services.worker.metrics import MetricsLimits, MetricsScraper
from services.worker.pool import RunnerPool
from services.worker.runner import RunnerState
from tests.unit.worker.support import FakeBlobs, eventually

GOOD = b"GGUF fake model\n"
OTHER = b"GGUF another fake model\n"
LIMITS = MetricsLimits(timeout=5.0, max_bytes=64 * 1024)


async def _chat(pool: RunnerPool, model_id: str, text: str) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    async with pool.acquire(model_id) as runner:
        async with runner.client.forward(Endpoint.CHAT_COMPLETIONS, body, stream=False) as upstream:
            assert upstream.status_code == 200
            _ = [chunk async for chunk in upstream.chunks()]


async def test_no_runners_no_metrics(pool: RunnerPool) -> None:
    assert await MetricsScraper(pool, LIMITS).scrape() == []


async def test_every_ready_runner_is_scraped_with_its_reference(
    pool: RunnerPool, blobs: FakeBlobs
) -> None:
    good = blobs.model(GOOD)
    other = blobs.model(OTHER)
    await pool.load(good, "ai/good:latest")
    await pool.load(other, "ai/other:v2")
    await _chat(pool, good.model_id, "three little words")

    scraped = await MetricsScraper(pool, LIMITS).scrape()

    by_model = {entry.model_id: entry for entry in scraped}
    assert set(by_model) == {good.model_id, other.model_id}
    assert by_model[good.model_id].reference == "ai/good:latest"
    assert by_model[other.model_id].reference == "ai/other:v2"
    # The text is llama-server's, untouched: the chat counted on one runner only.
    assert "llamacpp:prompt_tokens_total 3\n" in by_model[good.model_id].text
    assert "llamacpp:prompt_tokens_total 0\n" in by_model[other.model_id].text
    assert by_model[good.model_id].text.startswith("# HELP llamacpp:prompt_tokens_total")
    # The scrape's leases are over.
    assert [s.in_flight for s in pool.snapshot()] == [0, 0]


async def test_a_stalled_runner_is_left_out_after_the_timeout(
    pool: RunnerPool, blobs: FakeBlobs, caplog: pytest.LogCaptureFixture
) -> None:
    good = blobs.model(GOOD)
    stalled = blobs.model(b"METRICS-STALL\n")
    await pool.load(good, "ai/good")
    await pool.load(stalled, "ai/stalled")
    scraper = MetricsScraper(pool, MetricsLimits(timeout=0.3, max_bytes=64 * 1024))

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="services.worker.metrics"):
        scraped = await scraper.scrape()
    elapsed = time.monotonic() - started

    assert [entry.reference for entry in scraped] == ["ai/good"]
    # One deadline for all runners at once, not one after the other.
    assert elapsed < 2.0
    assert any(
        "ai/stalled" in record.getMessage() and "within 0.3s" in record.getMessage()
        for record in caplog.records
    )
    assert [s.in_flight for s in pool.snapshot()] == [0, 0]


@pytest.mark.parametrize(
    ("first_line", "reason"),
    [
        (b"METRICS-OFF\n", "HTTP 501"),
        (b"METRICS-HUGE\n", "WORKER_METRICS_MAX_BYTES"),
    ],
    ids=["not-200", "too-large"],
)
async def test_bad_answers_are_left_out_with_a_warning(
    pool: RunnerPool,
    blobs: FakeBlobs,
    caplog: pytest.LogCaptureFixture,
    first_line: bytes,
    reason: str,
) -> None:
    await pool.load(blobs.model(first_line), "ai/bad")
    await pool.load(blobs.model(GOOD), "ai/good")
    with caplog.at_level(logging.WARNING, logger="services.worker.metrics"):
        scraped = await MetricsScraper(pool, LIMITS).scrape()
    assert [entry.reference for entry in scraped] == ["ai/good"]
    assert any(reason in record.getMessage() for record in caplog.records)


async def test_runners_that_are_not_ready_are_not_scraped(
    pool: RunnerPool, blobs: FakeBlobs
) -> None:
    crashed = blobs.model(b"CRASH llama_model_load: error loading model\n")
    with pytest.raises(RunnerStartError):
        await pool.load(crashed, "ai/crashed")
    slow = blobs.model(b"SLOW\n")
    loading = asyncio.create_task(pool.load(slow, "ai/slow"))
    await eventually(
        lambda: any(s.model_id == slow.model_id for s in pool.snapshot()),
        what="the slow model to start loading",
    )
    try:
        states = {s.model_id: s.state for s in pool.snapshot()}
        assert states == {crashed.model_id: RunnerState.FAILED, slow.model_id: RunnerState.STARTING}
        assert await MetricsScraper(pool, LIMITS).scrape() == []
    finally:
        await pool.unload(slow.model_id)
        with pytest.raises(RunnerStoppedError):
            await loading
