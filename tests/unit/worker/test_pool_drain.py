"""Shutdown's first step, `RunnerPool.drain`: runners turn DRAINING at once (so the heartbeat
takes them out of routing), requests in flight finish, nothing new is taken, and `close()`
then leaves no process behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.worker.errors import ModelNotReadyError, RunnerStoppedError
from services.worker.pool import RunnerPool
from services.worker.runner import RunnerState
from tests.support.processes import is_alive
from tests.unit.worker.support import FakeBlobs, eventually, make_pool

GOOD = b"GGUF fake model\n"
OTHER = b"GGUF another fake model\n"


@pytest.fixture
async def changes_and_pool(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> AsyncIterator[tuple[list[int], RunnerPool]]:
    changes: list[int] = []
    pool = make_pool(fake_binary, runtime_dir, blobs, on_change=lambda: changes.append(1))
    try:
        yield changes, pool
    finally:
        await pool.close()


async def test_drain_waits_for_requests_in_flight_and_refuses_new_work(
    changes_and_pool: tuple[list[int], RunnerPool], blobs: FakeBlobs
) -> None:
    changes, pool = changes_and_pool
    spec = blobs.model(GOOD)
    snapshot = await pool.load(spec, "ai/fake")
    assert snapshot.pid is not None
    release = asyncio.Event()

    async def request_in_flight() -> None:
        async with pool.acquire(spec.model_id):
            await release.wait()

    request = asyncio.create_task(request_in_flight())
    await eventually(lambda: pool.snapshot()[0].in_flight == 1, what="the lease")
    changes.clear()
    draining = asyncio.create_task(pool.drain(30.0))

    await eventually(lambda: pool.snapshot()[0].state is RunnerState.DRAINING, what="DRAINING")
    assert changes, "the state change was not signalled: the heartbeat would not go out at once"
    assert not draining.done()
    with pytest.raises(ModelNotReadyError):
        async with pool.acquire(spec.model_id):
            pass
    with pytest.raises(RunnerStoppedError):
        await pool.load(blobs.model(OTHER), "ai/other")

    release.set()
    await request
    await asyncio.wait_for(draining, 10)
    assert is_alive(snapshot.pid)  # draining stops nothing; close() does
    await pool.close()
    assert not is_alive(snapshot.pid)
    assert pool.snapshot()[0].state is RunnerState.STOPPED


async def test_drain_gives_up_after_its_timeout(
    changes_and_pool: tuple[list[int], RunnerPool], blobs: FakeBlobs
) -> None:
    _, pool = changes_and_pool
    spec = blobs.model(GOOD)
    await pool.load(spec, "ai/fake")
    stuck = asyncio.Event()

    async def never_finishes() -> None:
        async with pool.acquire(spec.model_id):
            await stuck.wait()

    request = asyncio.create_task(never_finishes())
    await eventually(lambda: pool.snapshot()[0].in_flight == 1, what="the lease")
    await asyncio.wait_for(pool.drain(0.2), 10)
    assert pool.snapshot()[0].in_flight == 1
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)


async def test_drain_with_nothing_loaded_returns_at_once(
    changes_and_pool: tuple[list[int], RunnerPool],
) -> None:
    changes, pool = changes_and_pool
    assert not pool.closed
    await asyncio.wait_for(pool.drain(30.0), 1.0)
    assert pool.snapshot() == []
    # No runner changed state, yet the heartbeat must go out: it tells the scheduler that this
    # worker is shutting down.
    assert pool.closed
    assert changes
