"""A runner's slots: at most `count` requests generate at once, the rest wait in arrival order.

Like llama-server: each slot keeps the tokens of the last request it served (prompt and answer)
in its KV cache. A request goes to the free slot sharing the longest prefix with its prompt
(least recently used on a tie), and that prefix costs no prompt processing. With every slot busy
a request is deferred; a freed slot goes to the oldest deferred request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence

__all__ = ["Slot", "SlotPool", "common_prefix"]


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Slot:
    """One slot; only the request holding it touches `cached`."""

    def __init__(self, index: int) -> None:
        self.index = index
        # The slot's KV cache: what it last processed and generated.
        self.cached: list[str] = []
        # When it was last taken (a sequence number): least recently used wins ties.
        self.last_used = 0
        self.busy = False


class SlotPool:
    def __init__(self, count: int) -> None:
        if count <= 0:
            raise ValueError(f"a runner needs at least one slot, got {count}")
        self._slots = [Slot(index) for index in range(count)]
        self._waiters: collections.deque[asyncio.Future[Slot]] = collections.deque()
        self._uses = itertools.count(1)

    @property
    def count(self) -> int:
        return len(self._slots)

    @property
    def processing(self) -> int:
        return sum(1 for slot in self._slots if slot.busy)

    @property
    def deferred(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def acquire(self, prompt: Sequence[str]) -> AsyncIterator[Slot]:
        """Hold a slot for one request; freed on every exit path, cancellation included."""
        slot = await self._take(prompt)
        try:
            yield slot
        finally:
            self._give_back(slot)

    async def _take(self, prompt: Sequence[str]) -> Slot:
        if not self._waiters:
            free = [slot for slot in self._slots if not slot.busy]
            if free:
                best = max(free, key=lambda s: (common_prefix(s.cached, prompt), -s.last_used))
                return self._mark(best)
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot in the same tick it was cancelled: pass it on.
                self._give_back(waiter.result())
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _mark(self, slot: Slot) -> Slot:
        slot.busy = True
        slot.last_used = next(self._uses)
        return slot

    def _give_back(self, slot: Slot) -> None:
        slot.busy = False
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(self._mark(slot))
                return
