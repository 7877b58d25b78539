from __future__ import annotations

import asyncio

import pytest

from services.scheduler.errors import LoadFailed, LoadTimeout, ShuttingDown
from services.scheduler.loader import Loader, LoadOutcome
from services.scheduler.membership import Membership
from services.scheduler.snapshot import RunnerReport, WorkerSpec
from services.scheduler.workers import LoadOptions
from tests.unit.scheduler.fakes import FakeClock, poll
from tests.unit.scheduler.memory_fakes import MemoryWorkers, resolved

MODEL = resolved("m")
OTHER = resolved("other")
W1 = WorkerSpec("w1", "h:1", memory_total_bytes=100, memory_free_bytes=100)
W2 = WorkerSpec("w2", "h:2", memory_total_bytes=100, memory_free_bytes=100)
OPTIONS = LoadOptions(context_size=1024, parallel=2, llama_args=("--top-k", "5"), memory_bytes=40)


def setup(
    *, load_timeout: float = 30.0
) -> tuple[Loader, Membership, MemoryWorkers, FakeClock, list[LoadOutcome]]:
    clock = FakeClock()
    membership = Membership(worker_timeout=6.0, confirm_grace=2.0)
    workers = MemoryWorkers()
    outcomes: list[LoadOutcome] = []
    loader = Loader(
        membership=membership,
        workers=workers,
        clock=clock,
        load_timeout=load_timeout,
        rpc_timeout=5.0,
        on_finished=outcomes.append,
    )
    membership.register(W1, [], clock.monotonic())
    membership.register(W2, [], clock.monotonic())
    return loader, membership, workers, clock, outcomes


async def test_load_reserves_memory_then_records_the_ready_runner() -> None:
    loader, membership, workers, clock, outcomes = setup()
    workers.gate.clear()
    assert loader.start(MODEL, W1, OPTIONS)
    assert not loader.start(MODEL, W1, OPTIONS), "one load per (model, worker)"
    assert loader.loading(MODEL.model_id) == 1 and loader.busy(MODEL.model_id)
    placeholder = membership.snapshot(clock.monotonic(), {}).workers[0].runner(MODEL.model_id)
    assert placeholder is not None and placeholder.pending
    assert placeholder.report.memory_bytes == 40 and placeholder.report.parallel == 2
    workers.gate.set()
    await poll(lambda: outcomes != [], what="the load to finish")
    assert outcomes[0].error is None and outcomes[0].worker == W1
    assert workers.options == [OPTIONS]
    [ready] = membership.snapshot(0, {}).replicas(MODEL.model_id)
    assert ready.worker_id == "w1" and ready.report.parallel == 2
    assert not loader.busy(MODEL.model_id)
    await loader.aclose()


async def test_replicas_load_on_two_workers_at_once() -> None:
    loader, membership, _, _, outcomes = setup()
    assert loader.start(MODEL, W1, OPTIONS)
    assert loader.start(MODEL, W2, OPTIONS)
    assert loader.loading(MODEL.model_id) == 2
    await poll(lambda: len(outcomes) == 2, what="both loads")
    replicas = membership.snapshot(0, {}).replicas(MODEL.model_id)
    assert {r.worker_id for r in replicas} == {"w1", "w2"}
    await loader.aclose()


async def test_failure_drops_the_placeholder_and_reports_the_reason() -> None:
    loader, membership, workers, _, outcomes = setup()
    workers.fail_with = "out of memory"
    loader.start(MODEL, W1, OPTIONS)
    await poll(lambda: outcomes != [], what="the load to fail")
    error = outcomes[0].error
    assert isinstance(error, LoadFailed) and error.reason == "out of memory"
    assert membership.snapshot(0, {}).runners() == ()
    # The next attempt starts a new load.
    workers.fail_with = None
    assert loader.start(MODEL, W1, OPTIONS)
    await poll(lambda: len(outcomes) == 2, what="the retry")
    assert outcomes[1].error is None
    await loader.aclose()


async def test_load_deadline() -> None:
    loader, membership, workers, _, outcomes = setup(load_timeout=0.05)
    workers.gate.clear()
    loader.start(MODEL, W1, OPTIONS)
    await poll(lambda: outcomes != [], what="the load to time out")
    assert isinstance(outcomes[0].error, LoadTimeout)
    assert not loader.busy(MODEL.model_id)
    assert membership.snapshot(0, {}).runners() == ()
    await loader.aclose()


async def test_evictions_happen_before_the_load() -> None:
    loader, membership, workers, clock, outcomes = setup()
    membership.record_loaded("w1", RunnerReport(model_id=OTHER.model_id), clock.monotonic())
    [victim] = membership.snapshot(0, {}).runners()
    workers.unload_gate.clear()
    loader.start(MODEL, W1, OPTIONS, evict=[victim])
    await poll(lambda: workers.unloads != [], what="the eviction")
    for _ in range(20):
        await asyncio.sleep(0)
    assert workers.loads == [], "the load waits for the eviction"
    workers.unload_gate.set()
    await poll(lambda: outcomes != [], what="the load")
    assert workers.unloads == [("w1", OTHER.model_id)]
    assert workers.loads == [("w1", MODEL.model_id)]
    assert [r.model_id for r in membership.snapshot(0, {}).runners()] == [MODEL.model_id]
    await loader.aclose()


async def test_close_cancels_loads_and_refuses_new_ones() -> None:
    loader, _, workers, _, outcomes = setup()
    workers.gate.clear()
    loader.start(MODEL, W1, OPTIONS)
    await poll(lambda: workers.loads != [], what="the load call")
    await loader.aclose()
    assert isinstance(outcomes[0].error, ShuttingDown)
    with pytest.raises(ShuttingDown):
        loader.start(MODEL, W1, OPTIONS)


async def test_load_waits_for_an_unload_of_the_same_runner() -> None:
    loader, membership, workers, clock, outcomes = setup()
    membership.record_loaded("w1", RunnerReport(model_id=MODEL.model_id), clock.monotonic())
    [runner] = membership.snapshot(0, {}).runners()
    workers.unload_gate.clear()
    unloading = asyncio.create_task(loader.unload([runner]))
    await poll(lambda: workers.unloads != [], what="unload call")
    loader.start(MODEL, W1, OPTIONS)
    for _ in range(20):  # let the load task run as far as it can
        await asyncio.sleep(0)
    assert loader.busy(MODEL.model_id)
    assert workers.loads == [], "Load must not overlap the Unload of the same runner"
    workers.unload_gate.set()
    assert await unloading == 1
    await poll(lambda: outcomes != [], what="the load")
    assert workers.loads == [("w1", MODEL.model_id)]
    assert membership.snapshot(0, {}).replicas(MODEL.model_id)
    await loader.aclose()


async def test_unload_skips_runners_already_gone() -> None:
    loader, membership, workers, clock, _ = setup()
    membership.register(
        WorkerSpec("w1", "h:1"), [RunnerReport(model_id=MODEL.model_id)], clock.monotonic()
    )
    [runner] = membership.snapshot(0, {}).runners()
    assert await loader.unload([runner]) == 1
    assert await loader.unload([runner]) == 0
    assert workers.unloads == [("w1", MODEL.model_id)]
