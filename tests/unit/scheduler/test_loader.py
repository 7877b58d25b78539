from __future__ import annotations

import asyncio

import pytest

from services.scheduler.errors import (
    LoadFailed,
    LoadTimeout,
    NoWorkerAvailable,
    QueueFull,
    ShuttingDown,
)
from services.scheduler.loader import Loader
from services.scheduler.membership import Membership
from services.scheduler.snapshot import RunnerReport, RunnerState, WorkerSpec
from tests.unit.scheduler.fakes import FakeClock, poll
from tests.unit.scheduler.memory_fakes import MemoryWorkers, resolved

MODEL = resolved("m")


def setup(
    *, max_waiting: int = 8, load_timeout: float = 30.0
) -> tuple[Loader, Membership, MemoryWorkers, FakeClock]:
    clock = FakeClock()
    membership = Membership(worker_timeout=6.0, confirm_grace=2.0)
    workers = MemoryWorkers()
    loader = Loader(
        membership=membership,
        workers=workers,
        clock=clock,
        load_timeout=load_timeout,
        max_waiting=max_waiting,
        rpc_timeout=5.0,
    )
    membership.register(WorkerSpec("w1", "h:1", memory_free_bytes=9), [], clock.monotonic())
    membership.register(WorkerSpec("w2", "h:2", memory_free_bytes=1), [], clock.monotonic())
    return loader, membership, workers, clock


async def test_concurrent_callers_share_one_load() -> None:
    loader, membership, workers, clock = setup()
    workers.gate.clear()
    snap = membership.snapshot(clock.monotonic(), {})
    calls = [asyncio.create_task(loader.ensure_loaded(MODEL, snap, timeout=5)) for _ in range(5)]
    await poll(lambda: loader.waiting(MODEL.model_id) == 5, what="waiters")
    assert loader.busy(MODEL.model_id)
    placeholder = membership.snapshot(clock.monotonic(), {}).workers[0].runner(MODEL.model_id)
    assert placeholder is not None and placeholder.pending
    workers.gate.set()
    reports = await asyncio.gather(*calls)
    assert workers.loads == [("w1", MODEL.model_id)]
    assert {r.state for r in reports} == {RunnerState.READY}
    assert [r.worker_id for r in membership.snapshot(0, {}).replicas(MODEL.model_id)] == ["w1"]
    assert not loader.busy(MODEL.model_id)
    await loader.aclose()


async def test_caller_giving_up_does_not_cancel_the_load_for_others() -> None:
    loader, membership, workers, clock = setup()
    workers.gate.clear()
    snap = membership.snapshot(clock.monotonic(), {})
    patient = asyncio.create_task(loader.ensure_loaded(MODEL, snap, timeout=5))
    with pytest.raises(LoadTimeout):
        await loader.ensure_loaded(MODEL, snap, timeout=0.01)
    workers.gate.set()
    assert (await patient).state is RunnerState.READY
    await loader.aclose()


async def test_failure_reaches_all_and_next_call_retries() -> None:
    loader, membership, workers, clock = setup()
    workers.gate.clear()
    workers.fail_with = "out of memory"
    snap = membership.snapshot(clock.monotonic(), {})
    calls = [asyncio.create_task(loader.ensure_loaded(MODEL, snap, timeout=5)) for _ in range(3)]
    await poll(lambda: loader.waiting(MODEL.model_id) == 3, what="waiters")
    workers.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, LoadFailed) and r.reason == "out of memory" for r in results)
    assert membership.snapshot(0, {}).runners() == (), "placeholder removed"
    workers.fail_with = None
    await loader.ensure_loaded(MODEL, membership.snapshot(0, {}), timeout=5)
    assert len(workers.loads) == 2
    await loader.aclose()


async def test_waiters_are_bounded() -> None:
    loader, membership, workers, clock = setup(max_waiting=1)
    workers.gate.clear()
    snap = membership.snapshot(clock.monotonic(), {})
    first = asyncio.create_task(loader.ensure_loaded(MODEL, snap, timeout=5))
    await poll(lambda: loader.waiting(MODEL.model_id) == 1, what="waiter")
    with pytest.raises(QueueFull):
        await loader.ensure_loaded(MODEL, snap, timeout=5)
    workers.gate.set()
    await first
    await loader.aclose()


async def test_load_deadline() -> None:
    loader, membership, workers, _ = setup(load_timeout=0.05)
    workers.gate.clear()
    with pytest.raises(LoadTimeout):
        await loader.ensure_loaded(MODEL, membership.snapshot(0, {}), timeout=5)
    assert not loader.busy(MODEL.model_id)
    assert membership.snapshot(0, {}).runners() == ()
    await loader.aclose()


async def test_no_alive_worker() -> None:
    loader, membership, workers, clock = setup()
    clock.advance(60)
    with pytest.raises(NoWorkerAvailable, match="no worker available to serve ai/m:latest"):
        await loader.ensure_loaded(MODEL, membership.snapshot(clock.monotonic(), {}), timeout=5)
    assert workers.loads == []


async def test_close_fails_waiters_and_refuses_new_loads() -> None:
    loader, membership, workers, _ = setup()
    workers.gate.clear()
    waiter = asyncio.create_task(loader.ensure_loaded(MODEL, membership.snapshot(0, {}), timeout=5))
    await poll(lambda: loader.waiting(MODEL.model_id) == 1, what="waiter")
    await loader.aclose()
    with pytest.raises(ShuttingDown):
        await waiter
    with pytest.raises(ShuttingDown):
        await loader.ensure_loaded(MODEL, membership.snapshot(0, {}), timeout=5)


async def test_load_waits_for_an_unload_of_the_same_runner() -> None:
    loader, membership, workers, clock = setup()
    membership.record_loaded("w1", RunnerReport(model_id=MODEL.model_id), clock.monotonic())
    [runner] = membership.snapshot(0, {}).runners()
    workers.unload_gate.clear()
    unloading = asyncio.create_task(loader.unload([runner]))
    await poll(lambda: workers.unloads != [], what="unload call")
    loading = asyncio.create_task(
        loader.ensure_loaded(MODEL, membership.snapshot(0, {}), timeout=5)
    )
    for _ in range(20):  # let the load task run as far as it can
        await asyncio.sleep(0)
    assert loader.busy(MODEL.model_id)
    assert workers.loads == [], "Load must not overlap the Unload of the same runner"
    workers.unload_gate.set()
    assert await unloading == 1
    await loading
    assert workers.loads == [("w1", MODEL.model_id)]
    assert membership.snapshot(0, {}).replicas(MODEL.model_id)
    await loader.aclose()


async def test_unload_skips_runners_already_gone() -> None:
    loader, membership, workers, clock = setup()
    membership.register(
        WorkerSpec("w1", "h:1"), [RunnerReport(model_id=MODEL.model_id)], clock.monotonic()
    )
    [runner] = membership.snapshot(0, {}).runners()
    assert await loader.unload([runner]) == 1
    assert await loader.unload([runner]) == 0
    assert workers.unloads == [("w1", MODEL.model_id)]
