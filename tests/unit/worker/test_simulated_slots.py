"""The simulated runner's slots: a concurrency cap, arrival order, prompt-cache slot choice."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.worker.simulated.slots import Slot, SlotPool, common_prefix
from tests.unit.worker.support import eventually


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("", "", 0), ("a b c", "a b d", 2), ("a b", "a b c", 2), ("x", "a", 0), ("a b", "a b", 2)],
)
def test_common_prefix(a: str, b: str, expected: int) -> None:
    assert common_prefix(a.split(), b.split()) == expected


class Holder:
    """Takes a slot for `prompt` in a task and keeps it until `release()`."""

    def __init__(self, pool: SlotPool, prompt: Sequence[str], log: list[str], name: str) -> None:
        self.slot: Slot | None = None
        self._done = asyncio.Event()

        async def hold() -> None:
            async with pool.acquire(prompt) as slot:
                self.slot = slot
                log.append(name)
                await self._done.wait()

        self.task = asyncio.create_task(hold(), name=f"holder-{name}")

    async def release(self) -> None:
        self._done.set()
        await self.task


async def test_at_most_count_hold_slots_and_the_rest_wait_in_arrival_order() -> None:
    pool = SlotPool(2)
    log: list[str] = []
    holders = {name: Holder(pool, [name], log, name) for name in "abcde"}
    await eventually(lambda: pool.deferred == 3, what="three deferred requests")
    assert (pool.processing, log) == (2, ["a", "b"])
    await holders["b"].release()
    await eventually(lambda: log == ["a", "b", "c"], what="c to get b's slot")
    assert holders["c"].slot is not None and holders["c"].slot.index == 1
    await holders["a"].release()
    await eventually(lambda: log[-1] == "d", what="d next")
    for name in "cde":
        await holders[name].release()
    assert log == ["a", "b", "c", "d", "e"]
    assert (pool.processing, pool.deferred) == (0, 0)


async def test_a_cancelled_waiter_leaves_its_place_to_the_next() -> None:
    pool = SlotPool(1)
    log: list[str] = []
    first = Holder(pool, ["x"], log, "first")
    await eventually(lambda: log == ["first"], what="the first request")
    gone = Holder(pool, ["x"], log, "gone")
    last = Holder(pool, ["x"], log, "last")
    await eventually(lambda: pool.deferred == 2, what="two waiting")
    gone.task.cancel()
    await asyncio.gather(gone.task, return_exceptions=True)
    assert pool.deferred == 1
    await first.release()
    await eventually(lambda: log == ["first", "last"], what="the last request")
    await last.release()
    assert pool.processing == 0


async def test_a_free_slot_is_chosen_by_longest_common_prefix_then_least_recently_used() -> None:
    pool = SlotPool(3)
    conversation = ["you", "are", "helpful", ".", "hello", "there"]
    async with pool.acquire(conversation) as slot:
        assert slot.index == 0  # all empty: the least recently used, the first
        slot.cached[:] = [*conversation, "token0", "token1"]
    async with pool.acquire(["something", "else", "entirely"]) as slot:
        assert slot.index == 1  # no prefix anywhere: least recently used, not slot 0
        slot.cached[:] = ["something", "else", "entirely"]
    async with pool.acquire([*conversation, "token0", "token1", "more"]) as slot:
        assert slot.index == 0  # the one holding the conversation
    async with pool.acquire(["you", "are", "helpful", ".", "other", "question"]) as slot:
        assert slot.index == 0  # a shared system prompt still beats an empty slot
    async with pool.acquire(["nothing"]) as slot:
        assert slot.index == 2


async def test_a_busy_slot_is_not_chosen_for_its_prefix() -> None:
    pool = SlotPool(2)
    log: list[str] = []
    async with pool.acquire(["p", "q"]) as slot:
        slot.cached[:] = ["p", "q"]
    holder = Holder(pool, ["p", "q", "r"], log, "a")
    await eventually(lambda: holder.slot is not None, what="the slot")
    assert holder.slot is not None and holder.slot.index == 0
    async with pool.acquire(["p", "q", "s"]) as slot:
        assert slot.index == 1
    await holder.release()


def test_a_pool_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        SlotPool(0)
