"""Issue 4's control-plane behaviour through the real gRPC service, with fake workers and a fake
registry: slots and the queue, priorities, memory refusals, per-model configuration, replicas
and affinity."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from modelrunner.v1 import common_pb2, scheduler_pb2
from tests.unit.scheduler.fakes import QWEN, SMOLLM2, FakeClock, Scheduler, cluster, poll

MODEL_ID = SMOLLM2.id
REASON = "x-modelrunner-reason"
# The background autoscaler would act on the fake clock too; the tests call it themselves.
QUIET = {"SCHEDULER_AUTOSCALE_INTERVAL": "1h"}


async def assign(
    scheduler: Scheduler,
    *,
    priority: int = 0,
    prefix_hashes: tuple[int, ...] = (),
    tags: dict[str, str] | None = None,
) -> scheduler_pb2.AssignResponse:
    return await scheduler.stub.Assign(
        scheduler_pb2.AssignRequest(
            model="smollm2",
            priority=priority,
            prefix_hashes=prefix_hashes,
            required_tags=tags or {},
        ),
        timeout=10,
    )


async def release(scheduler: Scheduler, lease_id: str) -> None:
    await scheduler.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=lease_id), timeout=5)


async def configure(scheduler: Scheduler, **config: object) -> scheduler_pb2.ModelConfigEntry:
    return await scheduler.stub.ConfigureModel(
        scheduler_pb2.ConfigureModelRequest(
            model="smollm2",
            config=common_pb2.ModelRuntimeConfig(**config),  # type: ignore[arg-type]
        ),
        timeout=10,
    )


def reason(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(REASON)  # type: ignore[arg-type]


async def test_requests_beyond_the_slots_wait_and_higher_priority_goes_first() -> None:
    env = {**QUIET, "SCHEDULER_DEFAULT_PARALLEL": "1"}
    async with cluster(("w1",), env=env) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        holder = await assign(s)
        low = asyncio.create_task(assign(s, priority=0))
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 1, what="low waits")
        high = asyncio.create_task(assign(s, priority=5))
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 2, what="high waits")
        [placement] = (
            await s.stub.ListPlacements(scheduler_pb2.ListPlacementsRequest(), timeout=5)
        ).placements
        assert (placement.in_flight, placement.queued) == (1, 2)
        await release(s, holder.lease_id)
        served = await high
        assert not low.done()
        await release(s, served.lease_id)
        await release(s, (await low).lease_id)
        assert s.app.control.queue.waiting(MODEL_ID) == 0


async def test_a_wait_past_the_queue_timeout_is_queue_full() -> None:
    env = {**QUIET, "SCHEDULER_DEFAULT_PARALLEL": "1", "SCHEDULER_QUEUE_TIMEOUT": "0.2"}
    async with cluster(("w1",), env=env) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        await assign(s)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await assign(s)
        assert excinfo.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(excinfo.value) == "queue-full"
        assert "free slot" in (excinfo.value.details() or "")
        assert s.app.control.queue.waiting(MODEL_ID) == 0


async def test_a_model_that_fits_nowhere_is_refused_before_any_load() -> None:
    async with cluster(env=QUIET) as c, c.scheduler() as s:
        for worker in c.workers.values():
            await worker.register(s.stub)
        await configure(s, context_size=1 << 20, parallel=64)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await assign(s)
        assert excinfo.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(excinfo.value) == "insufficient-memory"
        assert "needs" in (excinfo.value.details() or "")
        assert all(w.load_calls == [] for w in c.workers.values())


async def test_no_worker_with_the_requested_tags_is_unavailable() -> None:
    async with cluster(env=QUIET) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await assign(s, tags={"accelerator": "nvidia"})
        assert excinfo.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "accelerator=nvidia" in (excinfo.value.details() or "")
        # The same model on a matching worker is fine.
        assert (await assign(s, tags={"accelerator": "cpu"})).worker_id == "w1"


async def test_configuration_is_refused_while_busy_then_applied_to_the_next_load() -> None:
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        w1 = c.workers["w1"]
        await w1.register(s.stub)
        lease = await assign(s)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await configure(s, context_size=2048)
        assert excinfo.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        await release(s, lease.lease_id)
        entry = await configure(
            s, context_size=2048, parallel=3, llama_args=["--top-k", "5"], keep_alive_seconds=-1
        )
        assert entry.model_id == MODEL_ID and entry.reference == "ai/smollm2:latest"
        assert w1.unload_calls == [MODEL_ID], "the idle runner with the old options goes"
        await poll(lambda: not s.app.control.snapshot().runners(), what="runner forgotten")
        await assign(s)
        request = w1.load_requests[-1]
        assert (request.context_size, request.parallel) == (2048, 3)
        assert list(request.llama_args) == ["--cache-ram", "256", "--top-k", "5"]
        assert request.memory_estimate_bytes > 0
        assert s.app.control.keep_alive_for(MODEL_ID) is None


async def test_flags_outside_the_allowlist_are_invalid() -> None:
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await configure(s, llama_args=["--model", "x.gguf"])
        assert excinfo.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "--model" in (excinfo.value.details() or "")


async def test_configurations_survive_a_scheduler_restart(tmp_path: Path) -> None:
    env = {**QUIET, "SCHEDULER_STATE_PATH": str(tmp_path / "configs.json")}
    async with cluster(("w1",), env=env) as c:
        async with c.scheduler() as s:
            await configure(s, context_size=512, min_replicas=0, max_replicas=3)
        async with c.scheduler() as s:
            reply = await s.stub.ListModelConfigs(
                scheduler_pb2.ListModelConfigsRequest(), timeout=5
            )
            [entry] = reply.entries
            assert entry.model_id == MODEL_ID
            assert (entry.config.context_size, entry.config.max_replicas) == (512, 3)


async def test_sustained_queue_adds_a_replica_on_another_worker() -> None:
    env = {
        **QUIET,
        "SCHEDULER_DEFAULT_PARALLEL": "1",
        "SCHEDULER_MAX_REPLICAS": "2",
        "SCHEDULER_SCALE_UP_QUEUE": "1",
        "SCHEDULER_SCALE_UP_AFTER": "1s",
    }
    async with cluster(env=env) as c, c.scheduler() as s:
        for worker in c.workers.values():
            await worker.register(s.stub)
        first = await assign(s)
        waiting = [asyncio.create_task(assign(s)) for _ in range(3)]
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 3, what="3 waiters")
        clock = s.app.clock
        assert isinstance(clock, FakeClock)
        await s.app.control.autoscale_once(clock.monotonic())
        assert c.workers["w2"].load_calls == [], "pressure must last before a replica is added"
        clock.advance(1.0)
        await s.app.control.autoscale_once(clock.monotonic())
        served = await asyncio.wait_for(asyncio.shield(waiting[0]), 5)
        assert c.workers["w2"].load_calls == [MODEL_ID]
        assert {first.worker_id, served.worker_id} == {"w1", "w2"}
        for lease in [first, served]:
            await release(s, lease.lease_id)
        for task in waiting[1:]:
            await release(s, (await task).lease_id)


@contextlib.asynccontextmanager
async def two_replicas(env: dict[str, str]) -> AsyncIterator[Scheduler]:
    """A scheduler whose two workers both already serve the model."""
    async with cluster(env={**QUIET, **env}) as c:
        for worker in c.workers.values():
            worker.preload(SMOLLM2)
        async with c.scheduler() as s:
            for worker in c.workers.values():
                await worker.register(s.stub)
            yield s


async def hold_one_spread_another(s: Scheduler) -> tuple[scheduler_pb2.AssignResponse, str]:
    """Conversation (11, 12) takes a lease on one worker; another conversation goes to the
    other worker and ends. Returns the held lease and the other worker's id."""
    held = await assign(s, prefix_hashes=(11, 12))
    other = await assign(s, prefix_hashes=(91,))
    assert other.worker_id != held.worker_id, "a new conversation spreads the load"
    await release(s, other.lease_id)
    return held, other.worker_id


@contextlib.asynccontextmanager
async def two_one_slot_replicas(
    affinity_wait: str,
) -> AsyncIterator[tuple[Scheduler, scheduler_pb2.AssignResponse, str]]:
    """Both replicas have one slot and conversation (11, 12) holds one of them: yields the
    scheduler, that lease and the free worker's id."""
    env = {"SCHEDULER_DEFAULT_PARALLEL": "1", "SCHEDULER_AFFINITY_WAIT": affinity_wait}
    async with two_replicas(env) as s:
        held, free_worker = await hold_one_spread_another(s)
        yield s, held, free_worker


async def test_a_conversation_returns_to_the_replica_holding_its_prefix() -> None:
    async with two_replicas({"SCHEDULER_MAX_REPLICAS": "2"}) as s:
        turn1, _ = await hold_one_spread_another(s)
        await release(s, turn1.lease_id)
        for _ in range(3):
            turn = await assign(s, prefix_hashes=(11, 12, 13, 14))
            assert turn.worker_id == turn1.worker_id
            await release(s, turn.lease_id)


async def test_list_workers_reports_memory_reserved_and_cache() -> None:
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        await release(s, (await assign(s)).lease_id)
        [status] = (await s.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)).workers
        assert status.alive and status.worker.worker_id == "w1"
        assert status.runners == 1
        assert (
            status.memory_reserved_bytes == c.workers["w1"].load_requests[0].memory_estimate_bytes
        )
        assert dict(status.worker.tags) == {"accelerator": "cpu"}


async def test_a_request_keep_alive_overrides_the_model_default() -> None:
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        control = s.app.control
        assert control.keep_alive_for(MODEL_ID) == 300.0
        pinned = await s.stub.Assign(
            scheduler_pb2.AssignRequest(model="smollm2", keep_alive_seconds=-1), timeout=10
        )
        assert control.keep_alive_for(MODEL_ID) is None
        await release(s, pinned.lease_id)
        unload_now = await s.stub.Assign(
            scheduler_pb2.AssignRequest(model="smollm2", keep_alive_seconds=0), timeout=10
        )
        assert control.keep_alive_for(MODEL_ID) == 0.0
        # A request that says nothing keeps the last word.
        await release(s, (await assign(s)).lease_id)
        assert control.keep_alive_for(MODEL_ID) == 0.0
        await release(s, unload_now.lease_id)
        await poll(lambda: c.workers["w1"].unload_calls == [MODEL_ID], what="unload when idle")
        await control.sweep(c.clock.monotonic())
        assert control.keep_alive_for(MODEL_ID) == 300.0, "forgotten once the model is gone"


async def test_a_model_that_fits_a_busy_worker_waits_then_loads_in_place_of_the_idle_one() -> None:
    """WORKER_MAX_RUNNERS=1 and the one runner serves a request: a second model is not refused
    (507 would say no worker could ever hold it); it waits, and loads once the first goes idle."""
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        worker = c.workers["w1"]
        worker.max_runners = 1
        await worker.register(s.stub)
        busy = await assign(s)
        control = s.app.control
        waiting = asyncio.ensure_future(
            s.stub.Assign(scheduler_pb2.AssignRequest(model="qwen"), timeout=10)
        )
        await poll(lambda: control.queue.waiting(QWEN.id) == 1, what="qwen waits")
        await control.autoscale_once(c.clock.monotonic())
        assert worker.load_calls == [MODEL_ID], "no load while the only runner is busy"
        assert not waiting.done()
        await release(s, busy.lease_id)
        await control.autoscale_once(c.clock.monotonic())
        served = await waiting
        assert served.model_id == QWEN.id
        assert worker.unload_calls == [MODEL_ID]
        await release(s, served.lease_id)


async def test_max_runners_travels_from_register_to_list_workers() -> None:
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        c.workers["w1"].max_runners = 3
        await c.workers["w1"].register(s.stub)
        [status] = (await s.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)).workers
        assert status.worker.max_runners == 3


async def test_assigns_beyond_the_admission_bound_are_refused_at_once() -> None:
    env = {**QUIET, "SCHEDULER_DEFAULT_PARALLEL": "1", "SCHEDULER_MAX_ASSIGNS_IN_FLIGHT": "1"}
    async with cluster(("w1",), env=env) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        holder = await assign(s)
        queued = asyncio.create_task(assign(s))
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 1, what="one waits")
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await assign(s)
        assert excinfo.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(excinfo.value) == "queue-full"
        assert "answering 1 requests" in (excinfo.value.details() or "")
        assert s.app.control.queue.waiting(MODEL_ID) == 1, "the refused one never queued"
        await release(s, holder.lease_id)
        await release(s, (await queued).lease_id)


async def test_a_turn_waits_for_its_full_replica_while_others_take_the_free_one() -> None:
    async with two_one_slot_replicas("30s") as (s, held, free_worker):
        turn2 = asyncio.create_task(assign(s, prefix_hashes=(11, 12, 13, 14)))
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 1, what="turn 2 waits")
        # A new conversation behind it is not held up: it takes the free replica.
        newcomer = await asyncio.wait_for(assign(s, prefix_hashes=(55,)), 5)
        assert newcomer.worker_id == free_worker
        assert not turn2.done()
        await release(s, held.lease_id)
        served = await asyncio.wait_for(turn2, 5)
        assert served.worker_id == held.worker_id
        await release(s, served.lease_id)
        await release(s, newcomer.lease_id)


async def test_a_turn_stops_waiting_for_its_replica_after_the_affinity_wait() -> None:
    async with two_one_slot_replicas("0.2s") as (s, held, free_worker):
        turn2 = asyncio.create_task(assign(s, prefix_hashes=(11, 12, 13, 14)))
        await poll(lambda: s.app.control.queue.waiting(MODEL_ID) == 1, what="turn 2 waits")
        clock = s.app.clock
        assert isinstance(clock, FakeClock)
        clock.advance(1.0)
        # No release comes: the wait's own timer dispatches it to the free replica.
        served = await asyncio.wait_for(turn2, 5)
        assert served.worker_id == free_worker
        await release(s, served.lease_id)
        await release(s, held.lease_id)


async def test_affinity_wait_zero_takes_the_free_replica_at_once() -> None:
    async with two_one_slot_replicas("0") as (s, held, free_worker):
        turn2 = await asyncio.wait_for(assign(s, prefix_hashes=(11, 12, 13, 14)), 5)
        assert turn2.worker_id == free_worker
        await release(s, turn2.lease_id)
        await release(s, held.lease_id)


async def test_a_worker_that_says_it_is_draining_gets_no_new_load() -> None:
    async with cluster(env=QUIET) as c, c.scheduler() as s:
        for worker in c.workers.values():
            await worker.register(s.stub)
        assert await c.workers["w1"].heartbeat(s.stub, draining=True)
        workers = (await s.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)).workers
        assert {w.worker.worker_id: w.draining for w in workers} == {"w1": True, "w2": False}
        lease = await assign(s)
        assert lease.worker_id == "w2"
        assert c.workers["w1"].load_calls == []
        await release(s, lease.lease_id)
