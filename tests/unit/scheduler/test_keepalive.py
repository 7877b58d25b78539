from __future__ import annotations

import asyncio

import pytest

from services.scheduler.keepalive import Reaper, due_runners
from services.scheduler.leases import LeaseTable
from services.scheduler.loader import Loader
from services.scheduler.membership import Membership
from services.scheduler.snapshot import ClusterSnapshot, RunnerReport, RunnerState, WorkerSpec
from tests.unit.scheduler.fakes import FakeClock, poll
from tests.unit.scheduler.memory_fakes import MemoryWorkers
from tests.unit.scheduler.views import NOW, runner, snapshot, worker

FIVE_MINUTES = 300.0

CASES = [
    pytest.param(
        snapshot(worker("a", runners=(runner("a", last_used=NOW - 301),))),
        FIVE_MINUTES,
        frozenset(),
        ["a"],
        None,
        id="idle past keep-alive",
    ),
    pytest.param(
        snapshot(worker("a", runners=(runner("a", last_used=NOW - 100),))),
        FIVE_MINUTES,
        frozenset(),
        [],
        NOW + 200,
        id="idle but not yet: wake when it falls due",
    ),
    pytest.param(
        snapshot(worker("a", runners=(runner("a", first_seen=NOW - 400),))),
        FIVE_MINUTES,
        frozenset(),
        ["a"],
        None,
        id="never used: counts from when it appeared",
    ),
    pytest.param(
        snapshot(worker("a", runners=(runner("a", in_flight=1, last_used=NOW - 999),))),
        FIVE_MINUTES,
        frozenset(),
        [],
        None,
        id="busy runner is never unloaded",
    ),
    pytest.param(
        snapshot(worker("a", runners=(runner("a", reported_in_flight=2, last_used=None),))),
        0.0,
        frozenset(),
        [],
        None,
        id="adopted runner busy by the worker's own count",
    ),
    pytest.param(
        snapshot(
            worker(
                "a",
                runners=(runner("a", reported_in_flight=2, last_used=NOW, last_assigned=NOW),),
            )
        ),
        0.0,
        frozenset(),
        ["a"],
        None,
        id="worker count ignored once the scheduler leases it",
    ),
    pytest.param(
        snapshot(worker("a", runners=(runner("a", last_used=NOW),))),
        0.0,
        frozenset(),
        ["a"],
        None,
        id="keep-alive 0: unloaded as soon as idle",
    ),
    pytest.param(
        snapshot(worker("a", runners=(runner("a", last_used=NOW - 1e9),))),
        None,
        frozenset(),
        [],
        None,
        id="keep-alive -1: never",
    ),
    pytest.param(
        snapshot(
            worker("a", runners=(runner("a", state=RunnerState.STARTING, first_seen=0.0),)),
            worker("b", runners=(runner("b", pending=True, first_seen=0.0),)),
        ),
        0.0,
        frozenset(),
        [],
        None,
        id="loading runners are left alone",
    ),
    pytest.param(
        snapshot(worker("a", runners=(runner("a", last_used=0.0),))),
        0.0,
        frozenset({"m"}),
        [],
        NOW + 1.0,
        id="model with callers still waiting on a load: look again soon",
    ),
    pytest.param(
        snapshot(worker("a", alive=False, runners=(runner("a", last_used=0.0),))),
        0.0,
        frozenset(),
        [],
        None,
        id="dead worker's runners are not unloaded",
    ),
    pytest.param(
        snapshot(
            worker("a", runners=(runner("a", state=RunnerState.FAILED, last_used=NOW - 400),))
        ),
        FIVE_MINUTES,
        frozenset(),
        ["a"],
        None,
        id="failed runner reaped like an idle one",
    ),
]


@pytest.mark.parametrize(("cluster", "keep_alive", "loading", "due", "next_at"), CASES)
def test_due_runners(
    cluster: ClusterSnapshot,
    keep_alive: float | None,
    loading: frozenset[str],
    due: list[str],
    next_at: float | None,
) -> None:
    chosen, wake = due_runners(
        cluster, lambda model_id: keep_alive, lambda runner: runner.model_id in loading
    )
    assert [r.worker_id for r in chosen] == due
    assert wake == next_at


def reaper(
    keep_alive: float | None,
) -> tuple[Reaper, Membership, LeaseTable, MemoryWorkers, FakeClock]:
    clock = FakeClock()
    membership = Membership(worker_timeout=1e12, confirm_grace=2.0)
    leases = LeaseTable(lease_timeout=900.0, max_leases=10)
    workers = MemoryWorkers()
    loader = Loader(
        membership=membership,
        workers=workers,
        clock=clock,
        load_timeout=5.0,
        rpc_timeout=5.0,
    )
    membership.register(
        WorkerSpec("w1", "h:1"), [RunnerReport(model_id="m", reference="ai/m")], clock.monotonic()
    )
    return (
        Reaper(
            membership=membership,
            leases=leases,
            clock=clock,
            keep_alive_for=lambda model_id: keep_alive,
            unload=loader.unload,
        ),
        membership,
        leases,
        workers,
        clock,
    )


def use(membership: Membership, leases: LeaseTable, clock: FakeClock) -> None:
    """One request from start to end at the current time."""
    lease = leases.create("w1", "m", 0, clock.monotonic())
    membership.touch("w1", "m", clock.monotonic(), assigned=True)
    leases.release(lease.lease_id)
    membership.touch("w1", "m", clock.monotonic())


async def test_default_keep_alive_unloads_after_five_minutes_idle() -> None:
    r, membership, leases, workers, clock = reaper(FIVE_MINUTES)
    clock.advance(100)
    use(membership, leases, clock)
    assert await r.reap_once(clock.monotonic()) == clock.monotonic() + FIVE_MINUTES
    clock.advance(FIVE_MINUTES - 1)
    await r.reap_once(clock.monotonic())
    assert workers.unloads == []
    clock.advance(1)
    assert await r.reap_once(clock.monotonic()) is None
    assert workers.unloads == [("w1", "m")]
    assert membership.snapshot(clock.monotonic(), {}).runners() == ()


async def test_keep_alive_zero_waits_for_the_last_lease() -> None:
    r, membership, leases, workers, clock = reaper(0.0)
    lease = leases.create("w1", "m", 0, clock.monotonic())
    membership.touch("w1", "m", clock.monotonic(), assigned=True)
    await r.reap_once(clock.monotonic())
    assert workers.unloads == []
    leases.release(lease.lease_id)
    await r.reap_once(clock.monotonic())
    assert workers.unloads == [("w1", "m")]


async def test_keep_alive_never() -> None:
    r, membership, leases, workers, clock = reaper(None)
    use(membership, leases, clock)
    clock.advance(1e9)
    assert await r.reap_once(clock.monotonic()) is None
    assert workers.unloads == []


async def test_background_loop_wakes_on_poke_and_stops() -> None:
    r, membership, leases, workers, clock = reaper(FIVE_MINUTES)
    use(membership, leases, clock)
    task = asyncio.create_task(r.run())
    await asyncio.sleep(0)
    clock.advance(FIVE_MINUTES)
    assert workers.unloads == []
    r.poke()
    await poll(lambda: workers.unloads == [("w1", "m")], what="unload after poke")
    r.stop()
    await asyncio.wait_for(task, 5)


def test_keep_alive_is_per_model() -> None:
    cluster = snapshot(
        worker("a", runners=(runner("a", "short", last_used=NOW - 10),)),
        worker("b", runners=(runner("b", "long", last_used=NOW - 10),)),
        worker("c", runners=(runner("c", "pinned", last_used=NOW - 1e6),)),
    )
    keep_alive = {"short": 5.0, "long": 60.0, "pinned": None}
    chosen, wake = due_runners(cluster, keep_alive.__getitem__)
    assert [r.worker_id for r in chosen] == ["a"]
    assert wake == NOW + 50


async def test_releases_wake_the_reaper_only_when_a_runner_falls_due_earlier() -> None:
    """A pass snapshots the whole cluster: a release that falls due after the planned wake-up
    must not cost one, and one that falls due earlier (keep-alive 0: now) must."""
    r, membership, leases, workers, clock = reaper(FIVE_MINUTES)
    use(membership, leases, clock)
    task = asyncio.create_task(r.run())
    try:
        await poll(lambda: r.passes == 1, what="first pass")
        for _ in range(5):
            clock.advance(1)
            r.due_by(clock.monotonic() + FIVE_MINUTES)
        for _ in range(10):
            await asyncio.sleep(0)
        assert r.passes == 1, "later deadlines leave the reaper asleep"
        r.due_by(clock.monotonic())
        await poll(lambda: r.passes == 2, what="a pass for the earlier deadline")
        assert workers.unloads == []
    finally:
        r.stop()
        await asyncio.wait_for(task, 5)
