"""The resolver cache: hits within the TTL, misses after it, failures never cached, bounded."""

from __future__ import annotations

import pytest

from modelrunner.v1 import common_pb2
from services.scheduler.errors import ModelNotFound
from services.scheduler.resolver import ResolvedModel
from services.scheduler.resolver_cache import CachingModelResolver
from tests.unit.scheduler.fakes import FakeClock


class CountingResolver:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.missing: set[str] = set()
        self.closed = False

    async def resolve(self, text: str, *, timeout: float) -> ResolvedModel:
        self.calls.append(text)
        if text in self.missing:
            raise ModelNotFound(f"model {text} not found")
        model_id = f"sha256:{len(self.calls):064x}"
        return ResolvedModel(model_id=model_id, reference=text, model=common_pb2.Model(id=model_id))

    async def aclose(self) -> None:
        self.closed = True


def _cache(
    ttl: float = 2.0, max_entries: int = 8
) -> tuple[CachingModelResolver, CountingResolver, FakeClock]:
    inner, clock = CountingResolver(), FakeClock()
    return CachingModelResolver(inner, ttl=ttl, max_entries=max_entries, clock=clock), inner, clock


async def test_hits_within_ttl_and_refreshes_after() -> None:
    cache, inner, clock = _cache(ttl=2.0)
    first = await cache.resolve("ai/smollm2", timeout=1)
    clock.advance(1.9)
    assert await cache.resolve("ai/smollm2", timeout=1) == first
    clock.advance(0.2)
    refreshed = await cache.resolve("ai/smollm2", timeout=1)
    assert refreshed != first
    assert inner.calls == ["ai/smollm2", "ai/smollm2"]


async def test_failures_are_not_cached() -> None:
    cache, inner, _ = _cache()
    inner.missing.add("ai/new")
    with pytest.raises(ModelNotFound):
        await cache.resolve("ai/new", timeout=1)
    inner.missing.clear()
    assert (await cache.resolve("ai/new", timeout=1)).reference == "ai/new"
    assert inner.calls == ["ai/new", "ai/new"]


async def test_zero_ttl_disables_the_cache() -> None:
    cache, inner, _ = _cache(ttl=0)
    await cache.resolve("ai/x", timeout=1)
    await cache.resolve("ai/x", timeout=1)
    assert inner.calls == ["ai/x", "ai/x"]


async def test_bounded_least_recently_used_out_first() -> None:
    cache, inner, _ = _cache(max_entries=2)
    await cache.resolve("ai/a", timeout=1)
    await cache.resolve("ai/b", timeout=1)
    await cache.resolve("ai/a", timeout=1)  # hit: a becomes most recent
    await cache.resolve("ai/c", timeout=1)  # evicts b
    await cache.resolve("ai/a", timeout=1)  # still cached
    await cache.resolve("ai/b", timeout=1)  # asked again
    assert inner.calls == ["ai/a", "ai/b", "ai/c", "ai/b"]


async def test_close_closes_the_inner_resolver() -> None:
    cache, inner, _ = _cache()
    await cache.aclose()
    assert inner.closed
