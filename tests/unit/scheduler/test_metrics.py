"""The scheduler's metrics move with what the real control plane does (through its gRPC service,
fake workers and registry, the fake clock), and its exposition passes `promtool check metrics`."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import generate_latest

from modelrunner.v1 import scheduler_pb2
from services.common.env import SettingError
from services.scheduler.config import SchedulerSettings
from services.scheduler.metrics_collector import SchedulerCollector
from tests.unit.promtool import check_metrics
from tests.unit.scheduler.fakes import SMOLLM2, Scheduler, cluster, poll

MODEL = "ai/smollm2:latest"
QUIET = {"SCHEDULER_AUTOSCALE_INTERVAL": "1h"}


def sample(s: Scheduler, name: str, **labels: str) -> float | None:
    return s.app.control.metrics.registry.get_sample_value(name, labels)


def outcome(s: Scheduler, name: str) -> float | None:
    return sample(s, "modelrunner_scheduler_assignments_total", outcome=name)


async def assign(s: Scheduler, model: str = "smollm2") -> scheduler_pb2.AssignResponse:
    return await s.stub.Assign(scheduler_pb2.AssignRequest(model=model), timeout=10)


async def release(s: Scheduler, lease_id: str) -> None:
    await s.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=lease_id), timeout=5)


async def refused(s: Scheduler, model: str = "smollm2") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await assign(s, model)
    return excinfo.value


async def test_queue_full_queue_wait_and_the_levels_read_at_scrape_time() -> None:
    env = {**QUIET, "SCHEDULER_DEFAULT_PARALLEL": "1", "SCHEDULER_MAX_WAITING_PER_MODEL": "1"}
    async with cluster(("w1",), env=env) as c, c.scheduler() as s:
        registry = s.app.control.metrics.registry
        registry.register(SchedulerCollector(s.app.control))
        await c.workers["w1"].register(s.stub)
        holder = await assign(s)
        assert outcome(s, "assigned") == 1
        waiting = asyncio.create_task(assign(s))
        await poll(lambda: s.app.control.queue.waiting(SMOLLM2.id) == 1, what="a waiter")
        error = await refused(s)
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert outcome(s, "queue_full") == 1
        assert sample(s, "modelrunner_scheduler_queue_depth", model=MODEL) == 1
        assert sample(s, "modelrunner_scheduler_leases_in_flight") == 1
        assert sample(s, "modelrunner_scheduler_workers", state="alive") == 1
        assert sample(s, "modelrunner_scheduler_workers", state="dead") == 0
        assert (
            sample(s, "modelrunner_scheduler_workers_by_tag", tag="accelerator", value="cpu") == 1
        )
        assert sample(s, "modelrunner_scheduler_replicas", model=MODEL, state="ready") == 1
        assert sample(s, "modelrunner_scheduler_replicas", model=MODEL, state="starting") == 0

        c.clock.advance(2.5)
        await release(s, holder.lease_id)
        await release(s, (await waiting).lease_id)
        assert outcome(s, "assigned") == 2
        # Both waited: the first for the cold load (no time passed), the second 2.5 s for a slot.
        assert sample(s, "modelrunner_scheduler_queue_wait_seconds_count", model=MODEL) == 2
        assert sample(s, "modelrunner_scheduler_queue_wait_seconds_sum", model=MODEL) == 2.5
        # The series stays at 0, so the autoscaler sees an empty queue rather than no data.
        assert sample(s, "modelrunner_scheduler_queue_depth", model=MODEL) == 0
        assert sample(s, "modelrunner_scheduler_leases_in_flight") == 0
        check_metrics(generate_latest(registry))


async def test_a_load_observes_its_duration_and_the_assign_its_latency() -> None:
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        worker = c.workers["w1"]
        await worker.register(s.stub)
        worker.gate.clear()
        pending = asyncio.create_task(assign(s))
        await poll(lambda: worker.load_calls != [], what="the load to start")
        c.clock.advance(3.0)
        worker.gate.set()
        await release(s, (await pending).lease_id)
        assert sample(s, "modelrunner_scheduler_loads_total", model=MODEL, outcome="ready") == 1
        assert sample(s, "modelrunner_scheduler_load_duration_seconds_count", model=MODEL) == 1
        assert sample(s, "modelrunner_scheduler_load_duration_seconds_sum", model=MODEL) == 3.0
        assert sample(s, "modelrunner_scheduler_assign_duration_seconds_count") == 1
        assert sample(s, "modelrunner_scheduler_assign_duration_seconds_sum") == 3.0
        # The next Assign finds the replica at once: no load, no wait.
        await release(s, (await assign(s)).lease_id)
        assert sample(s, "modelrunner_scheduler_loads_total", model=MODEL, outcome="ready") == 1
        assert sample(s, "modelrunner_scheduler_assign_duration_seconds_count") == 2
        assert sample(s, "modelrunner_scheduler_assign_duration_seconds_sum") == 3.0


async def test_refusals_and_failures_are_counted_by_outcome() -> None:
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        assert (await refused(s)).code() is grpc.StatusCode.UNAVAILABLE
        assert outcome(s, "no_worker") == 1
        no_worker = "modelrunner_scheduler_placement_refusals_total"
        assert sample(s, no_worker, reason="no_worker") == 1

        assert (await refused(s, "ai/missing")).code() is grpc.StatusCode.NOT_FOUND
        assert outcome(s, "not_found") == 1

        worker = c.workers["w1"]
        worker.memory_free = 1
        await worker.register(s.stub)
        assert (await refused(s)).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert outcome(s, "insufficient_memory") == 1
        assert sample(s, no_worker, reason="insufficient_memory") == 1

        worker.memory_free = 8 << 30
        worker.fail_with = "llama-server exited"
        await worker.register(s.stub)
        assert (await refused(s)).code() is grpc.StatusCode.UNAVAILABLE
        assert outcome(s, "load_failed") == 1
        assert sample(s, "modelrunner_scheduler_loads_total", model=MODEL, outcome="failed") == 1
        assert sample(s, "modelrunner_scheduler_load_duration_seconds_count", model=MODEL) is None
        assert outcome(s, "assigned") == 0


async def test_idle_and_operator_unloads_are_counted_by_reason() -> None:
    env = {**QUIET, "MODEL_KEEP_ALIVE": "1s"}
    async with cluster(("w1",), env=env) as c, c.scheduler() as s:
        await c.workers["w1"].register(s.stub)
        await release(s, (await assign(s)).lease_id)
        c.clock.advance(2.0)
        await s.app.control.reaper.reap_once(c.clock.monotonic())
        await poll(lambda: c.workers["w1"].unload_calls != [], what="the idle unload")
        unloads = "modelrunner_scheduler_unloads_total"
        assert sample(s, unloads, reason="idle") == 1
        assert sample(s, unloads, reason="operator") == 0

        await c.workers["w1"].heartbeat(s.stub)
        await release(s, (await assign(s)).lease_id)
        await s.stub.UnloadModels(scheduler_pb2.UnloadModelsRequest(all=True), timeout=5)
        assert sample(s, unloads, reason="operator") == 1
        assert sample(s, unloads, reason="idle") == 1


def test_metrics_and_log_settings() -> None:
    defaults = SchedulerSettings.from_env({})
    assert (defaults.metrics_address, defaults.log_format) == ("127.0.0.1:9092", "json")
    custom = SchedulerSettings.from_env({"SCHEDULER_METRICS_ADDRESS": "0", "LOG_FORMAT": "text"})
    assert (custom.metrics_address, custom.log_format) == (None, "text")
    assert (
        SchedulerSettings.from_env({"SCHEDULER_METRICS_ADDRESS": "0.0.0.0:9100"}).metrics_address
        == "0.0.0.0:9100"
    )
    with pytest.raises(SettingError, match="SCHEDULER_METRICS_ADDRESS"):
        SchedulerSettings.from_env({"SCHEDULER_METRICS_ADDRESS": "nowhere"})
    with pytest.raises(SettingError, match="LOG_FORMAT"):
        SchedulerSettings.from_env({"LOG_FORMAT": "xml"})
