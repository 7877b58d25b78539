"""wait_event: a timeout-bounded wait that never swallows a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from services.common.waiting import wait_event


async def test_true_when_set_false_after_the_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(event, None) is True


async def _cancel_as_the_event_is_set(
    wait: Callable[[asyncio.Event], Awaitable[object]],
) -> asyncio.Task[object]:
    """A loop that waits on an event; it is told to stop in the same step the event is set, as
    a worker's heartbeat loop is when shutdown drains its runners."""
    event = asyncio.Event()

    async def loop_until_cancelled() -> object:
        while True:
            await wait(event)
            event.clear()

    task = asyncio.create_task(loop_until_cancelled())
    for _ in range(3):
        await asyncio.sleep(0)  # the task now waits on the event
    event.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 1.0)
    return task


async def test_a_cancellation_that_arrives_as_the_event_is_set_is_kept() -> None:
    task = await _cancel_as_the_event_is_set(lambda event: wait_event(event, 60))
    assert task.cancelled()


async def test_python_311_wait_for_loses_that_cancellation() -> None:
    """Why wait_event exists: with asyncio.wait_for the loop runs on (fixed in Python 3.12)."""
    task = await _cancel_as_the_event_is_set(lambda event: asyncio.wait_for(event.wait(), 60))
    try:
        if task.cancelled():
            pytest.skip("this Python's wait_for keeps the cancellation")
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
