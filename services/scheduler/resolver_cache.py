"""A short-lived, bounded cache in front of a ModelResolver.

Resolving is a registry round trip on every Assign, which is on the path to the first token.
Answers are kept for `ttl` seconds (SCHEDULER_RESOLVE_CACHE_TTL), so a moved or deleted tag is
seen within that time; failures are never cached, so a model packaged a moment ago is found at
once. At most `max_entries` references are kept, least recently used out first.

While the registry is unreachable, an expired answer is served rather than the error: a model
that is loaded keeps serving through a registry restart (the fault suite saw every Assign fail
for the restart's duration), and nobody can move a tag in a registry that is down.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from services.common.clock import Clock
from services.scheduler.errors import RegistryUnavailable
from services.scheduler.resolver import ModelResolver, ResolvedModel

__all__ = ["CachingModelResolver"]

_log = logging.getLogger(__name__)


class CachingModelResolver:
    def __init__(self, inner: ModelResolver, *, ttl: float, max_entries: int, clock: Clock) -> None:
        self._inner = inner
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ResolvedModel]] = OrderedDict()

    async def resolve(self, text: str, *, timeout: float) -> ResolvedModel:
        now = self._clock.monotonic()
        cached = self._entries.get(text)
        if cached is not None and cached[0] > now:
            self._entries.move_to_end(text)
            return cached[1]
        try:
            resolved = await self._inner.resolve(text, timeout=timeout)
        except RegistryUnavailable as exc:
            if cached is None:
                raise
            _log.warning("serving the last known resolution of %s: %s", text, exc)
            self._entries.move_to_end(text)
            return cached[1]
        if self._ttl > 0:
            self._entries[text] = (self._clock.monotonic() + self._ttl, resolved)
            self._entries.move_to_end(text)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return resolved

    async def aclose(self) -> None:
        self._entries.clear()
        await self._inner.aclose()
