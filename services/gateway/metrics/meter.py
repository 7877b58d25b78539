"""Timing and token counts of one answer, taken from the worker's chunks as they pass.

The chunks are never parsed on their way: per chunk the meter reads the clock, observes one
histogram, and hands the bytes to a `UsageScanner` (services/gateway/usage.py), which keeps the
answer's tail and finds its token counts once the answer is done: llama-server's `usage` (in the
body of a non-streamed answer, in the last event of a stream when `stream_options.include_usage`
asks for it), else its `timings`.
"""

from __future__ import annotations

from services.common.clock import Clock
from services.gateway.metrics.families import GatewayMetrics
from services.gateway.usage import UsageScanner

__all__ = ["StreamMeter"]

_USAGE_KEY = b'"usage"'
_DONE = b"[DONE]"


class StreamMeter:
    """Fed every chunk of one 2xx answer (`chunk`), then `finish()` once."""

    __slots__ = (
        "_clock",
        "_inter_token",
        "_last",
        "_metrics",
        "_model",
        "_scanner",
        "_started",
        "_streaming",
    )

    def __init__(
        self,
        metrics: GatewayMetrics,
        clock: Clock,
        *,
        model: str,
        started: float,
        streaming: bool,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._model = model
        self._started = started
        # A non-streamed answer arrives whole: its first chunk is its end, not a first token.
        self._streaming = streaming
        self._inter_token = metrics.inter_token_latency.labels(model) if streaming else None
        self._last: float | None = None
        self._scanner: UsageScanner | None = UsageScanner()

    def chunk(self, data: bytes) -> None:
        if not data:
            return
        if self._scanner is not None:
            self._scanner.feed(data)
        if self._inter_token is None:
            return
        # The usage event (a stream's last before `[DONE]`, perhaps split over chunks) and
        # `[DONE]` carry no token; timing them would skew the latencies.
        if _USAGE_KEY in data or _DONE in data:
            self._inter_token = None
            return
        now = self._clock.monotonic()
        if self._last is None:
            self._metrics.time_to_first_token.labels(self._model).observe(now - self._started)
        else:
            self._inter_token.observe(now - self._last)
        self._last = now

    def finish(self) -> None:
        scanner, self._scanner = self._scanner, None
        usage = scanner.usage() if scanner is not None else None
        if usage is None:
            return
        self._metrics.prompt_tokens.labels(self._model).inc(usage.prompt_tokens)
        self._metrics.completion_tokens.labels(self._model).inc(usage.completion_tokens)
