"""`bench`: the same chat request at several concurrency levels; tokens/s and time to first token.

Each level sends `requests` streamed requests (at least one per slot), `concurrency` at a time,
with temperature 0 and a fixed seed, so levels differ only in load. Tokens per request come from
the answer's `usage`, else llama-server's `timings.predicted_n`, else the count of content chunks;
TTFT is measured here, from sending the request to the first content chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from model_cli.errors import CliError, GatewayUnreachable
from model_cli.wire import ChatChunk
from services.common.clock import Clock

__all__ = [
    "DEFAULT_PROMPT",
    "LevelResult",
    "RequestResult",
    "bench_table",
    "measure",
    "percentile",
    "run_level",
]

DEFAULT_PROMPT = "Write a short story about a robot who learns to paint."
Json = Any
ChunkStream = Generator[ChatChunk, None, None]
Ask = Callable[[dict[str, Json]], ChunkStream]


@dataclass(frozen=True)
class RequestResult:
    latency: float
    ttft: float | None = None
    tokens: int = 0
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    wall: float
    results: tuple[RequestResult, ...]

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.error is None]

    @property
    def errors(self) -> int:
        return len(self.results) - len(self.ok)

    @property
    def tokens_per_second(self) -> float:
        """All tokens generated at this level over its wall time."""
        return sum(r.tokens for r in self.ok) / self.wall if self.wall > 0 else 0.0

    @property
    def per_request_tokens_per_second(self) -> float | None:
        """Mean decode speed one client sees (tokens after the first over the time they took)."""
        speeds = [
            (r.tokens - 1) / (r.latency - r.ttft)
            for r in self.ok
            if r.ttft is not None and r.tokens > 1 and r.latency > r.ttft
        ]
        return sum(speeds) / len(speeds) if speeds else None

    def ttft(self, q: float) -> float | None:
        return percentile([r.ttft for r in self.ok if r.ttft is not None], q)

    def latency(self, q: float) -> float | None:
        return percentile([r.latency for r in self.ok], q)

    def as_json(self) -> dict[str, Json]:
        return {
            "concurrency": self.concurrency,
            "requests": len(self.results),
            "errors": self.errors,
            "wall_seconds": self.wall,
            "tokens": sum(r.tokens for r in self.ok),
            "tokens_per_second": self.tokens_per_second,
            "per_request_tokens_per_second": self.per_request_tokens_per_second,
            "ttft_p50_seconds": self.ttft(50),
            "ttft_p95_seconds": self.ttft(95),
            "latency_p50_seconds": self.latency(50),
            "latency_p95_seconds": self.latency(95),
            "first_error": next((r.error for r in self.results if r.error), None),
        }


def measure(ask: Ask, body: dict[str, Json], clock: Clock) -> RequestResult:
    """One streamed request; a failure becomes an error result, except an unreachable gateway,
    which ends the whole benchmark."""
    start = clock.monotonic()
    ttft: float | None = None
    chunks = 0
    reported: int | None = None
    try:
        with closing(ask(body)) as stream:
            for chunk in stream:
                if chunk.content:
                    chunks += 1
                    if ttft is None:
                        ttft = clock.monotonic() - start
                if chunk.completion_tokens is not None:
                    reported = chunk.completion_tokens
                elif chunk.timings and "predicted_n" in chunk.timings and reported is None:
                    reported = int(chunk.timings["predicted_n"])
    except GatewayUnreachable:
        raise
    except CliError as exc:
        return RequestResult(latency=clock.monotonic() - start, error=exc.one_line())
    return RequestResult(
        latency=clock.monotonic() - start,
        ttft=ttft,
        tokens=reported if reported is not None else chunks,
    )


def run_level(
    send: Callable[[], RequestResult], concurrency: int, requests: int, clock: Clock
) -> LevelResult:
    """`requests` calls of `send` (at least `concurrency`), `concurrency` at a time."""
    total = max(requests, concurrency)
    start = clock.monotonic()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench")
    try:
        futures = [pool.submit(send) for _ in range(total)]
        results = tuple(future.result() for future in futures)
    finally:
        # On Ctrl-C, drop what has not started; running requests end within their timeouts.
        pool.shutdown(wait=False, cancel_futures=True)
    return LevelResult(concurrency=concurrency, wall=clock.monotonic() - start, results=results)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def bench_table(model: str, levels: Sequence[LevelResult]) -> Table:
    table = Table(title=f"{model}", title_justify="left", header_style="bold")
    for column in (
        "CONCURRENCY",
        "REQUESTS",
        "ERRORS",
        "TOKENS/S",
        "TOKENS/S PER REQUEST",
        "TTFT P50",
        "TTFT P95",
        "LATENCY P50",
    ):
        table.add_column(column, justify="right")
    for level in levels:
        table.add_row(
            str(level.concurrency),
            str(len(level.results)),
            str(level.errors),
            _rate(level.tokens_per_second),
            _rate(level.per_request_tokens_per_second),
            _ms(level.ttft(50)),
            _ms(level.ttft(95)),
            _ms(level.latency(50)),
        )
    return table
