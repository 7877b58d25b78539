"""Formatting helpers and the benchmark's arithmetic."""

from __future__ import annotations

import io
import threading
from collections.abc import Generator
from datetime import datetime
from typing import Any

import pytest
from rich.console import Console

from model_cli.bench import LevelResult, RequestResult, bench_table, measure, percentile, run_level
from model_cli.errors import ApiError, GatewayUnreachable
from model_cli.render import human_duration, human_size, short_id, until_text
from model_cli.wire import ChatChunk
from tests.unit.cli.conftest import ManualClock


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0B"), (999, "999B"), (1000, "1kB"), (98_362_432, "98.36MB"), (2.5e12, "2.5TB")],
)
def test_human_size(count: float, text: str) -> None:
    assert human_size(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "Less than a second"),
        (1.5, "1 second"),
        (42, "42 seconds"),
        (90, "About a minute"),
        (600, "10 minutes"),
        (4000, "About an hour"),
        (3 * 3600, "3 hours"),
        (3 * 86400, "3 days"),
        (21 * 86400, "3 weeks"),
        (120 * 86400, "4 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_short_id() -> None:
    assert short_id("sha256:0123456789abcdef") == "0123456789ab"
    assert short_id("0123456789abcdef") == "0123456789ab"


@pytest.mark.parametrize(
    ("row", "text"),
    [
        ({"loading": True}, "Loading..."),
        ({"keep_alive": "-1"}, "Forever"),
        ({"expires_at": "2027-01-15T08:05:00.000Z"}, "in 5 minutes"),
        ({"expires_at": "2027-01-15T07:00:00Z"}, "Now"),
        ({"expires_at": None}, "-"),
        ({"expires_at": "soon"}, "-"),
    ],
)
def test_until(row: dict[str, Any], text: str) -> None:
    now = datetime.fromisoformat("2027-01-15T08:00:00+00:00").timestamp()
    assert until_text(row, now) == text


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([3.0], 95, 3.0),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.0),
        ([4.0, 1.0, 3.0, 2.0], 95, 4.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def stream(
    clock: ManualClock, *chunks: ChatChunk, fail: Exception | None = None
) -> Generator[ChatChunk, None, None]:
    for chunk in chunks:
        clock.advance(0.1)
        yield chunk
    if fail is not None:
        raise fail


def test_measure_prefers_reported_usage(clock: ManualClock) -> None:
    chunks = [
        ChatChunk(),
        ChatChunk(content="a"),
        ChatChunk(content="b"),
        ChatChunk(completion_tokens=9),
    ]
    result = measure(lambda body: stream(clock, *chunks), {}, clock)
    assert result.tokens == 9 and result.error is None
    assert result.latency == pytest.approx(0.4)
    assert result.ttft == pytest.approx(0.2)


def test_measure_falls_back_to_timings_then_chunks(clock: ManualClock) -> None:
    timed = [ChatChunk(content="a"), ChatChunk(timings={"predicted_n": 7.0})]
    assert measure(lambda body: stream(clock, *timed), {}, clock).tokens == 7
    counted = [ChatChunk(content="a"), ChatChunk(content="b"), ChatChunk(content="")]
    assert measure(lambda body: stream(clock, *counted), {}, clock).tokens == 2


def test_measure_records_failures_but_not_an_unreachable_gateway(clock: ManualClock) -> None:
    failed = measure(
        lambda body: stream(clock, ChatChunk(content="a"), fail=ApiError(503, "busy")), {}, clock
    )
    assert failed.error == "busy" and failed.tokens == 0
    with pytest.raises(GatewayUnreachable):
        measure(lambda body: stream(clock, fail=GatewayUnreachable("http://x")), {}, clock)


def test_run_level_keeps_concurrency_requests_in_flight(clock: ManualClock) -> None:
    lock = threading.Lock()
    gate = threading.Barrier(3, timeout=10)
    active = 0
    peak = 0

    def send() -> RequestResult:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        gate.wait()  # three requests must be in flight together to pass
        with lock:
            active -= 1
        return RequestResult(latency=1.0, ttft=0.1, tokens=5)

    level = run_level(send, concurrency=3, requests=6, clock=clock)
    assert len(level.results) == 6
    assert peak == 3


def test_level_statistics() -> None:
    level = LevelResult(
        concurrency=2,
        wall=2.0,
        results=(
            RequestResult(latency=1.0, ttft=0.2, tokens=9),
            RequestResult(latency=1.5, ttft=0.5, tokens=11),
            RequestResult(latency=0.1, error="boom"),
        ),
    )
    assert level.errors == 1
    assert level.tokens_per_second == 10.0
    assert level.per_request_tokens_per_second == pytest.approx((8 / 0.8 + 10 / 1.0) / 2)
    assert (level.ttft(50), level.ttft(95)) == (0.2, 0.5)
    summary = level.as_json()
    assert summary["first_error"] == "boom" and summary["tokens"] == 20
    out = io.StringIO()
    Console(file=out, width=200).print(bench_table("ai/m", [level]))
    row = out.getvalue().splitlines()[-2]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["2", "3", "1", "10.0", "10.0", "200 ms", "500 ms", "1000 ms"]
