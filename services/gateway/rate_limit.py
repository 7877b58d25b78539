"""Per-client rate limits: requests and tokens a minute, as token buckets on an injected clock.

Each client (an API key, or the client address when no keys are set) has two buckets that refill
continuously: one request each, and the tokens its answers used. Tokens are only known once an
answer is finished, so they are charged afterwards and a bucket may go below zero; the client's
next requests wait until it is positive again (the OpenAI and LiteLLM behaviour). A refusal says
when to retry. At most `max_clients` clients are tracked, least recently seen dropped first.
The tokens an answer used are read by `services.gateway.usage`, whatever its dialect.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from services.common.clock import Clock

__all__ = ["RateLimiter", "RateLimits", "retry_after_header"]

_SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class RateLimits:
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_clients: int = 10_000

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute > 0 or self.tokens_per_minute > 0


class _Client:
    __slots__ = ("requests", "tokens", "updated")

    def __init__(self, limits: RateLimits, now: float) -> None:
        self.requests = float(limits.requests_per_minute)
        self.tokens = float(limits.tokens_per_minute)
        self.updated = now


class RateLimiter:
    """Owns every client's buckets; callers only ask `admit` and `charge`."""

    def __init__(self, limits: RateLimits, clock: Clock) -> None:
        self._limits = limits
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    @property
    def limits(self) -> RateLimits:
        return self._limits

    def admit(self, client: str) -> float | None:
        """Take one request from `client`'s budget; None when admitted, else seconds to wait."""
        state = self._refilled(client)
        rpm, tpm = self._limits.requests_per_minute, self._limits.tokens_per_minute
        waits = []
        if tpm > 0 and state.tokens <= 0:
            waits.append(-state.tokens / (tpm / _SECONDS_PER_MINUTE))
        if rpm > 0 and state.requests < 1:
            waits.append((1 - state.requests) / (rpm / _SECONDS_PER_MINUTE))
        if waits:
            return max(waits)
        if rpm > 0:
            state.requests -= 1
        return None

    def charge(self, client: str, tokens: int) -> None:
        """Count the tokens an answer used against `client`'s next requests."""
        if self._limits.tokens_per_minute > 0 and tokens > 0:
            self._refilled(client).tokens -= tokens

    def _refilled(self, client: str) -> _Client:
        now = self._clock.monotonic()
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client(self._limits, now)
            while len(self._clients) > self._limits.max_clients:
                self._clients.popitem(last=False)
            return state
        self._clients.move_to_end(client)
        elapsed = max(0.0, now - state.updated)
        state.updated = now
        rpm, tpm = self._limits.requests_per_minute, self._limits.tokens_per_minute
        state.requests = min(float(rpm), state.requests + elapsed * rpm / _SECONDS_PER_MINUTE)
        state.tokens = min(float(tpm), state.tokens + elapsed * tpm / _SECONDS_PER_MINUTE)
        return state


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up and at least 1, as HTTP's Retry-After wants them."""
    return str(max(1, math.ceil(seconds)))
