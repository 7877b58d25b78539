"""The resolver cache serves the last answer while the registry is down (issue 9's fault suite:
a registry restart failed every Assign of an already-loaded model)."""

from __future__ import annotations

import pytest

from modelrunner.v1 import common_pb2
from services.scheduler.errors import RegistryUnavailable
from services.scheduler.resolver import ResolvedModel
from services.scheduler.resolver_cache import CachingModelResolver
from tests.unit.scheduler.fakes import FakeClock


class FlakyRegistry:
    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def resolve(self, text: str, *, timeout: float) -> ResolvedModel:
        self.calls += 1
        if self.down:
            raise RegistryUnavailable(f"registry could not resolve {text}: UNAVAILABLE")
        model_id = f"sha256:{self.calls:064x}"
        return ResolvedModel(model_id=model_id, reference=text, model=common_pb2.Model(id=model_id))

    async def aclose(self) -> None:
        return None


async def test_an_expired_answer_is_served_while_the_registry_is_down() -> None:
    registry, clock = FlakyRegistry(), FakeClock()
    cache = CachingModelResolver(registry, ttl=2.0, max_entries=8, clock=clock)
    known = await cache.resolve("ai/smollm2", timeout=1)
    clock.advance(60.0)
    registry.down = True
    assert await cache.resolve("ai/smollm2", timeout=1) == known
    # It asked the registry first: the stale answer is only the fallback.
    assert registry.calls == 2
    # A reference it never resolved still fails.
    with pytest.raises(RegistryUnavailable):
        await cache.resolve("ai/other", timeout=1)
    registry.down = False
    assert await cache.resolve("ai/smollm2", timeout=1) != known
