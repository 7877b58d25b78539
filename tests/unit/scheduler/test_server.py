"""The scheduler's gRPC service end to end, in process, with fake workers and a fake registry."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from modelrunner.v1 import common_pb2, scheduler_pb2
from tests.unit.scheduler.fakes import (
    QWEN,
    SMOLLM2,
    FakeClock,
    FakeWorker,
    Scheduler,
    cluster,
    poll,
)

MODEL_ID = SMOLLM2.id


async def assign(scheduler: Scheduler, model: str = "smollm2") -> scheduler_pb2.AssignResponse:
    return await scheduler.stub.Assign(scheduler_pb2.AssignRequest(model=model), timeout=10)


async def release(scheduler: Scheduler, lease_id: str, *, runner_failed: bool = False) -> None:
    await scheduler.stub.Release(
        scheduler_pb2.ReleaseRequest(lease_id=lease_id, runner_failed=runner_failed), timeout=5
    )


async def advance(scheduler: Scheduler, workers: list[FakeWorker], seconds: float) -> None:
    """Move the clock; the workers heartbeat afterwards, as live workers would have meanwhile."""
    clock = scheduler.app.clock
    assert isinstance(clock, FakeClock)
    clock.advance(seconds)
    for worker in workers:
        assert await worker.heartbeat(scheduler.stub)


async def placements(scheduler: Scheduler) -> list[scheduler_pb2.Placement]:
    reply = await scheduler.stub.ListPlacements(scheduler_pb2.ListPlacementsRequest(), timeout=5)
    return list(reply.placements)


async def test_cold_model_is_loaded_once_for_concurrent_assigns() -> None:
    async with cluster(env={"SCHEDULER_DEFAULT_PARALLEL": "16"}) as c, c.scheduler() as s:
        for worker in c.workers.values():
            await worker.register(s.stub)
        w1 = c.workers["w1"]
        w1.gate.clear()
        calls = [asyncio.create_task(assign(s)) for _ in range(10)]
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 10, what="10 waiters")
        w1.gate.set()
        replies = await asyncio.gather(*calls)

        assert w1.load_calls == [MODEL_ID]
        assert c.workers["w2"].load_calls == []
        assert {r.worker_id for r in replies} == {"w1"}
        assert {r.worker_address for r in replies} == {w1.address}
        assert {r.model_id for r in replies} == {MODEL_ID}
        assert {r.reference for r in replies} == {"ai/smollm2:latest"}
        assert len({r.lease_id for r in replies}) == 10
        [placement] = await placements(s)
        assert placement.in_flight == 10
        assert placement.runner.state == common_pb2.RUNNER_STATE_READY


async def test_warm_model_is_routed_without_loading_again() -> None:
    async with cluster() as c, c.scheduler() as s:
        for worker in c.workers.values():
            await worker.register(s.stub)
        first = await assign(s)
        second = await assign(s)
        assert first.worker_id == second.worker_id == "w1"
        assert c.workers["w1"].load_calls == [MODEL_ID]


async def test_requests_spread_over_replicas_by_in_flight() -> None:
    async with cluster() as c:
        for worker in c.workers.values():
            worker.preload(SMOLLM2)
        async with c.scheduler() as s:
            for worker in c.workers.values():
                await worker.register(s.stub)
            replies = [await assign(s) for _ in range(4)]
            assert [r.worker_id for r in replies] == ["w1", "w2", "w1", "w2"]
            await release(s, replies[1].lease_id)
            assert (await assign(s)).worker_id == "w2"


async def test_load_failure_reaches_every_waiter_and_is_not_cached() -> None:
    async with cluster() as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        w1 = c.workers["w1"]
        w1.gate.clear()
        w1.fail_with = "llama-server exited: failed to load model"
        calls = [asyncio.create_task(assign(s)) for _ in range(5)]
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 5, what="5 waiters")
        w1.gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)

        assert w1.load_calls == [MODEL_ID]
        for result in results:
            assert isinstance(result, grpc.aio.AioRpcError)
            assert result.code() is grpc.StatusCode.UNAVAILABLE
            assert "failed to load model" in (result.details() or "")
        assert await placements(s) == []

        w1.fail_with = None
        reply = await assign(s)
        assert reply.worker_id == "w1"
        assert w1.load_calls == [MODEL_ID, MODEL_ID]


async def test_waiters_beyond_the_bound_are_rejected_at_once() -> None:
    async with cluster(env={"SCHEDULER_MAX_WAITING_PER_MODEL": "2"}) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        c.workers["w1"].gate.clear()
        calls = [asyncio.create_task(assign(s)) for _ in range(2)]
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 2, what="2 waiters")
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await assign(s)
        assert excinfo.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("x-modelrunner-reason", "queue-full") in tuple(
            excinfo.value.trailing_metadata() or ()
        )
        c.workers["w1"].gate.set()
        assert len(await asyncio.gather(*calls)) == 2
        assert c.workers["w1"].load_calls == [MODEL_ID]


async def test_load_timeout_is_deadline_exceeded() -> None:
    async with cluster(env={"SCHEDULER_LOAD_TIMEOUT": "0.2"}) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        c.workers["w1"].gate.clear()
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await assign(s)
        assert excinfo.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert await placements(s) == []


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("nothere", grpc.StatusCode.NOT_FOUND),
        ("sha256:" + "c" * 64, grpc.StatusCode.NOT_FOUND),
        ("Not A Reference", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_models_are_rejected(model: str, code: grpc.StatusCode) -> None:
    async with cluster() as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await assign(s, model)
        assert excinfo.value.code() is code
        assert c.workers["w1"].load_calls == []


async def test_model_id_is_accepted_and_shown_by_tag() -> None:
    async with cluster() as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        reply = await assign(s, MODEL_ID)
        assert (reply.model_id, reply.reference) == (MODEL_ID, "ai/smollm2:latest")


async def test_no_worker_is_unavailable() -> None:
    async with cluster() as c, c.scheduler() as s:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await assign(s)
        assert excinfo.value.code() is grpc.StatusCode.UNAVAILABLE
        assert excinfo.value.details() == "no worker available to serve ai/smollm2:latest"


async def test_dead_worker_model_is_placed_on_another_worker() -> None:
    async with cluster() as c, c.scheduler() as s:
        for worker in c.workers.values():
            await worker.register(s.stub)
        assert (await assign(s)).worker_id == "w1"

        # w1 goes silent; w2 keeps heartbeating past the worker timeout (3 x 2s).
        for _ in range(4):
            c.clock.advance(2.0)
            assert await c.workers["w2"].heartbeat(s.stub)
        reply = await assign(s)
        assert reply.worker_id == "w2"
        assert c.workers["w2"].load_calls == [MODEL_ID]
        assert {p.worker_id for p in await placements(s)} == {"w2"}

        # Once swept, the silent worker is told to register again.
        await s.app.control.sweep(c.clock.monotonic())
        assert not await c.workers["w1"].heartbeat(s.stub)
        await c.workers["w1"].register(s.stub)
        assert {p.worker_id for p in await placements(s)} == {"w1", "w2"}


async def test_restarted_scheduler_adopts_runners_from_register() -> None:
    async with cluster() as c:
        async with c.scheduler() as s:
            for worker in c.workers.values():
                await worker.register(s.stub)
            await assign(s)
        async with c.scheduler() as s:
            for worker in c.workers.values():
                await worker.register(s.stub)
            reply = await assign(s)
            assert reply.worker_id == "w1"
            assert c.workers["w1"].load_calls == [MODEL_ID]
            [placement] = await placements(s)
            assert (placement.worker_id, placement.runner.model_id) == ("w1", MODEL_ID)


async def test_heartbeat_reconciles_what_the_worker_reports() -> None:
    async with cluster() as c, c.scheduler() as s:
        w1 = c.workers["w1"]
        await w1.register(s.stub)
        lease = await assign(s)
        await release(s, lease.lease_id)
        # The worker loses the runner (crash, operator) and stops reporting it.
        w1.runners.clear()
        c.clock.advance(3.0)
        await w1.heartbeat(s.stub)
        assert await placements(s) == []
        # A runner it starts reporting is adopted.
        w1.preload(QWEN)
        await w1.heartbeat(s.stub)
        assert [p.runner.model_id for p in await placements(s)] == [QWEN.id]


async def test_unknown_worker_heartbeat_asks_to_register() -> None:
    async with cluster() as c, c.scheduler() as s:
        assert not await c.workers["w1"].heartbeat(s.stub)
        interval_ms = await c.workers["w1"].register(s.stub)
        assert interval_ms == 2000
        assert await c.workers["w1"].heartbeat(s.stub)


async def test_register_without_address_is_invalid() -> None:
    async with cluster() as c, c.scheduler() as s:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await s.stub.Register(
                scheduler_pb2.RegisterRequest(worker=scheduler_pb2.WorkerInfo(worker_id="x")),
                timeout=5,
            )
        assert excinfo.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_failed_runner_is_not_routed_to_and_retry_goes_elsewhere() -> None:
    async with cluster() as c, c.scheduler() as s:
        for worker in c.workers.values():
            await worker.register(s.stub)
        first = await assign(s)
        assert first.worker_id == "w1"
        await release(s, first.lease_id, runner_failed=True)
        retry = await assign(s)
        assert retry.worker_id == "w2"
        assert c.workers["w2"].load_calls == [MODEL_ID]
        # w1's stale heartbeat (same generation, still READY) does not revive the failed runner.
        await c.workers["w1"].heartbeat(s.stub)
        states = {p.worker_id: p.runner.state for p in await placements(s)}
        assert states == {"w1": common_pb2.RUNNER_STATE_FAILED, "w2": common_pb2.RUNNER_STATE_READY}


async def test_release_of_unknown_lease_is_not_found() -> None:
    async with cluster() as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        lease = await assign(s)
        await release(s, lease.lease_id)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await release(s, lease.lease_id)
        assert excinfo.value.code() is grpc.StatusCode.NOT_FOUND


async def test_list_placements_reports_use_and_expiry() -> None:
    async with cluster() as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        lease = await assign(s)
        await advance(s, [c.workers["w1"]], 7.0)
        await release(s, lease.lease_id)
        [placement] = await placements(s)
        assert placement.in_flight == 0
        assert placement.worker_address == c.workers["w1"].address
        assert placement.last_used_ms == int(c.clock.wall() * 1000)
        assert placement.expires_ms == placement.last_used_ms + 300_000
        assert placement.runner.reference == "ai/smollm2:latest"


async def test_keep_alive_never_reports_no_expiry() -> None:
    async with cluster(env={"MODEL_KEEP_ALIVE": "-1"}) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        await release(s, (await assign(s)).lease_id)
        await advance(s, [c.workers["w1"]], 10 * 86400)
        assert await s.app.control.reaper.reap_once(c.clock.monotonic()) is None
        [placement] = await placements(s)
        assert placement.expires_ms == 0
        assert c.workers["w1"].unload_calls == []


async def test_idle_runner_is_unloaded_after_keep_alive() -> None:
    async with cluster() as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        await release(s, (await assign(s)).lease_id)
        await advance(s, [c.workers["w1"]], 299.0)
        await s.app.control.reaper.reap_once(c.clock.monotonic())
        assert c.workers["w1"].unload_calls == []
        await advance(s, [c.workers["w1"]], 2.0)
        await s.app.control.reaper.reap_once(c.clock.monotonic())
        assert c.workers["w1"].unload_calls == [MODEL_ID]
        assert await placements(s) == []
        # The next request loads it again.
        assert (await assign(s)).worker_id == "w1"
        assert c.workers["w1"].load_calls == [MODEL_ID, MODEL_ID]


async def test_keep_alive_zero_unloads_when_the_last_request_ends() -> None:
    async with cluster(env={"MODEL_KEEP_ALIVE": "0"}) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        first, second = await assign(s), await assign(s)
        await release(s, first.lease_id)
        assert await s.app.control.reaper.reap_once(c.clock.monotonic()) is None
        assert c.workers["w1"].unload_calls == [], "still in use by the second request"
        await release(s, second.lease_id)
        # The background reaper is woken by the release; no clock change is needed.
        await poll(lambda: c.workers["w1"].unload_calls == [MODEL_ID], what="unload")


async def test_unload_models_skips_busy_runners() -> None:
    async with cluster() as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        busy = await assign(s, "smollm2")
        await release(s, (await assign(s, "qwen")).lease_id)
        reply = await s.stub.UnloadModels(scheduler_pb2.UnloadModelsRequest(all=True), timeout=5)
        assert reply.unloaded_runners == 1
        assert c.workers["w1"].unload_calls == [QWEN.id]
        await release(s, busy.lease_id)
        reply = await s.stub.UnloadModels(
            scheduler_pb2.UnloadModelsRequest(models=["ai/smollm2"]), timeout=5
        )
        assert reply.unloaded_runners == 1
        assert c.workers["w1"].unload_calls == [QWEN.id, MODEL_ID]
        assert await placements(s) == []


async def test_a_lagging_scheduler_does_not_expire_workers_it_was_too_busy_to_hear() -> None:
    async with cluster(("w1",)) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        control = s.app.control
        c.clock.advance(8.0)  # past the 6 s worker timeout, without a heartbeat processed
        # The sweep loop measured that the event loop ran 5 s late.
        control.lag.record(c.clock.monotonic(), 5.0)
        await control.sweep(c.clock.monotonic())
        assert await c.workers["w1"].heartbeat(s.stub), "kept: its heartbeats were only late"
        c.clock.advance(20.0)  # the lag left the window, and the worker is silent for 20 s
        await control.sweep(c.clock.monotonic())
        assert not await c.workers["w1"].heartbeat(s.stub)


async def test_the_sweep_loop_measures_how_late_the_event_loop_runs() -> None:
    env = {"SCHEDULER_HEARTBEAT_INTERVAL": "0.05s", "SCHEDULER_WORKER_TIMEOUT": "6s"}
    async with cluster(("w1",), env=env) as c, c.scheduler() as s:
        lag = s.app.control.lag
        time.sleep(0.3)  # noqa: ASYNC251 - the point: hold the event loop as a CPU-bound flood would
        await poll(lambda: lag.grace(c.clock.monotonic()) >= 0.2, what="the lag measured")
        c.clock.advance(60.0)  # jumps of the injected clock are not lag
        await poll(lambda: lag.grace(c.clock.monotonic()) < 0.2, what="the window moved on")
