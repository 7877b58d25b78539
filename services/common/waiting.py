"""Waiting for an event with a timeout, without ever losing a cancellation.

Python 3.11's `asyncio.wait_for` returns the inner result when a cancellation arrives just as the
awaited event is set, and the cancellation is gone: a long-lived loop (heartbeats, sweeps) told
to stop at that moment runs on, and whoever awaits its end waits forever (a worker's shutdown hung
on exactly that). `asyncio.timeout` has no such window (3.12 rebuilt `wait_for` on it).
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_event"]


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait up to `timeout` seconds (None: no limit) for `event`; True when it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
