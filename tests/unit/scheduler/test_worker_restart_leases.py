"""A worker restarted on the same address gets its slots back at once.

Found by the fault-injection suite (issue 9): after `kill -9` of a worker with streams in
flight, the restarted worker re-registered before the sweep declared the old one dead, and the
dead streams' leases kept its only replica's slots full until SCHEDULER_LEASE_TIMEOUT (15
minutes): every request went to the other worker.
"""

from __future__ import annotations

from tests.unit.scheduler.fakes import SMOLLM2, cluster
from tests.unit.scheduler.test_control_plane import QUIET, assign, release

MODEL_ID = SMOLLM2.id


async def test_leases_of_a_restarted_worker_are_dropped_on_reregistration() -> None:
    async with cluster(("w1",), env=QUIET) as c, c.scheduler() as s:
        worker = c.workers["w1"]
        await worker.register(s.stub)
        first = await assign(s)
        assert first.worker_id == "w1"
        leases = s.app.control.leases
        assert leases.in_flight() == {("w1", MODEL_ID): 1}

        # The same process registering again (its runner still there) keeps its leases.
        await worker.register(s.stub)
        assert leases.in_flight() == {("w1", MODEL_ID): 1}

        # A new process on the same address: no runners yet, the old requests are gone.
        worker.runners.clear()
        await worker.register(s.stub)
        assert leases.in_flight() == {}

        second = await assign(s)
        assert second.worker_id == "w1"
        await release(s, second.lease_id)
