"""A replica whose llama-server crashed (its runner FAILED) is replaced on the same worker.

Found by the fault-injection suite (issue 9): after `kill -9` of one llama-server, scale-up
excluded every worker that reported any runner of the model, FAILED ones included, so with
min-replicas equal to the worker count the lost replica never came back.
"""

from __future__ import annotations

from modelrunner.v1 import common_pb2
from tests.unit.scheduler.fakes import SMOLLM2, FakeClock, cluster, poll
from tests.unit.scheduler.test_control_plane import QUIET, configure

MODEL_ID = SMOLLM2.id


async def test_a_failed_replica_is_reloaded_on_its_worker() -> None:
    async with cluster(env=QUIET) as c, c.scheduler() as s:
        for worker in c.workers.values():
            await worker.register(s.stub)
        await configure(s, min_replicas=2, max_replicas=2)
        clock = s.app.clock
        assert isinstance(clock, FakeClock)
        for _ in range(2):
            await s.app.control.autoscale_once(clock.monotonic())
            await poll(
                lambda: sum(len(w.runners) for w in c.workers.values()) >= 1,
                what="a replica to load",
            )
        await poll(
            lambda: all(MODEL_ID in w.runners for w in c.workers.values()),
            what="a replica on every worker",
        )
        crashed = c.workers["w1"]
        crashed.runners[MODEL_ID].state = common_pb2.RUNNER_STATE_FAILED
        for worker in c.workers.values():
            await worker.heartbeat(s.stub)
        loads_before = list(crashed.load_calls)

        await s.app.control.autoscale_once(clock.monotonic())

        await poll(lambda: len(crashed.load_calls) > len(loads_before), what="a reload on w1")
        assert crashed.load_calls[-1] == MODEL_ID
        await poll(
            lambda: crashed.runners[MODEL_ID].state == common_pb2.RUNNER_STATE_READY,
            what="the replacement to be ready",
        )
