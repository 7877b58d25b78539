"""Token buckets per client on an injected clock."""

from __future__ import annotations

import pytest

from services.gateway.rate_limit import (
    RateLimiter,
    RateLimits,
    retry_after_header,
)
from tests.unit.scheduler.fakes import FakeClock


def test_requests_per_minute_refuse_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(requests_per_minute=2), clock)

    assert limiter.admit("key-1") is None
    assert limiter.admit("key-1") is None
    wait = limiter.admit("key-1")
    assert wait == pytest.approx(30.0)
    # Another client has its own budget.
    assert limiter.admit("key-2") is None

    clock.advance(29.0)
    assert limiter.admit("key-1") is not None
    clock.advance(1.0)
    assert limiter.admit("key-1") is None


def test_refused_requests_do_not_spend_budget() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(requests_per_minute=1), clock)
    assert limiter.admit("a") is None
    for _ in range(5):
        assert limiter.admit("a") is not None
    clock.advance(60.0)
    assert limiter.admit("a") is None


def test_tokens_are_charged_against_the_next_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(tokens_per_minute=600), clock)

    assert limiter.admit("a") is None
    limiter.charge("a", 900)  # one answer overdrew the budget by 300 tokens
    wait = limiter.admit("a")
    assert wait == pytest.approx(30.0)  # 300 tokens at 10 a second
    clock.advance(31.0)
    assert limiter.admit("a") is None


def test_unlimited_is_the_default() -> None:
    limiter = RateLimiter(RateLimits(), FakeClock())
    assert not limiter.limits.enabled
    for _ in range(1000):
        assert limiter.admit("a") is None
    limiter.charge("a", 10**9)
    assert limiter.admit("a") is None


def test_client_table_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(requests_per_minute=1, max_clients=2), clock)
    assert limiter.admit("a") is None
    assert limiter.admit("b") is None
    assert limiter.admit("c") is None  # "a" is dropped, least recently seen
    assert limiter.admit("b") is not None  # "b" is still tracked
    assert limiter.admit("a") is None  # a fresh bucket


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30.0, "30")])
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header
