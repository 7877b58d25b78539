from __future__ import annotations

from services.scheduler.membership import Membership
from services.scheduler.snapshot import RunnerReport, RunnerState, RunnerView, WorkerSpec

TIMEOUT = 6.0
GRACE = 2.0


def membership() -> Membership:
    return Membership(worker_timeout=TIMEOUT, confirm_grace=GRACE)


def spec(worker_id: str = "w1", address: str = "h:1") -> WorkerSpec:
    return WorkerSpec(worker_id=worker_id, address=address, memory_free_bytes=100)


def report(
    model_id: str = "m", state: RunnerState = RunnerState.READY, generation: int = 1
) -> RunnerReport:
    return RunnerReport(model_id=model_id, state=state, generation=generation)


def runners(m: Membership, now: float) -> dict[tuple[str, str], RunnerView]:
    return {(r.worker_id, r.model_id): r for r in m.snapshot(now, {}).runners()}


def state_of(m: Membership, now: float, model_id: str = "m") -> RunnerState | None:
    view = runners(m, now).get(("w1", model_id))
    return view.state if view else None


def test_register_adopts_reported_runners_but_not_stopped_ones() -> None:
    m = membership()
    m.register(spec(), [report("a"), report("b", RunnerState.STOPPED)], now=0.0)
    assert set(runners(m, 0.0)) == {("w1", "a")}
    assert m.snapshot(0.0, {}).replicas("a")[0].worker_address == "h:1"


def test_heartbeat_from_unknown_worker_is_refused() -> None:
    assert not membership().heartbeat("ghost", [], 0, now=0.0)


def test_reregister_replaces_the_entry() -> None:
    m = membership()
    m.register(spec(address="old:1"), [report("a")], now=0.0)
    previous = m.register(spec(address="new:1"), [report("b")], now=1.0)
    assert previous is not None and previous.address == "old:1"
    [worker] = m.snapshot(1.0, {}).workers
    assert worker.address == "new:1"
    assert [r.model_id for r in worker.runners] == ["b"]


def test_reregister_keeps_usage_of_the_same_process() -> None:
    m = membership()
    m.register(spec(), [report("a")], now=0.0)
    m.touch("w1", "a", now=5.0, assigned=True)
    m.register(spec(), [report("a")], now=9.0)
    view = runners(m, 9.0)[("w1", "a")]
    assert (view.first_seen, view.last_used, view.last_assigned) == (0.0, 5.0, 5.0)


def test_runner_no_longer_reported_is_dropped() -> None:
    m = membership()
    m.register(spec(), [report("a"), report("b")], now=0.0)
    m.heartbeat("w1", [report("a")], 100, now=1.0)
    assert set(runners(m, 1.0)) == {("w1", "a")}


def test_unknown_runner_reported_in_heartbeat_is_adopted() -> None:
    m = membership()
    m.register(spec(), [], now=0.0)
    m.heartbeat("w1", [report("a", RunnerState.STARTING)], 100, now=1.0)
    assert state_of(m, 1.0, "a") is RunnerState.STARTING
    m.heartbeat("w1", [report("a", RunnerState.READY)], 100, now=2.0)
    assert m.snapshot(2.0, {}).replicas("a")


def test_stale_state_of_the_same_generation_does_not_undo_a_later_one() -> None:
    m = membership()
    m.register(spec(), [], now=0.0)
    m.reserve("w1", "m", "ai/m", now=0.0)
    m.record_loaded("w1", report(generation=3), now=1.0)
    # A heartbeat sent while loading arrives after the Load response.
    m.heartbeat("w1", [report(state=RunnerState.STARTING, generation=3)], 100, now=1.1)
    assert state_of(m, 1.1) is RunnerState.READY
    m.heartbeat("w1", [report(generation=2)], 100, now=1.2)
    assert state_of(m, 1.2) is RunnerState.READY


def test_heartbeat_that_crossed_a_load_response_does_not_drop_the_runner() -> None:
    m = membership()
    m.register(spec(), [], now=0.0)
    m.reserve("w1", "m", "ai/m", now=0.0)
    m.heartbeat("w1", [], 100, now=0.5)
    assert state_of(m, 0.5) is RunnerState.STARTING, "a load in progress is kept"
    m.record_loaded("w1", report(), now=1.0)
    m.heartbeat("w1", [], 100, now=1.5)
    assert state_of(m, 1.5) is RunnerState.READY, "within the grace"
    m.heartbeat("w1", [], 100, now=1.0 + GRACE + 0.1)
    assert state_of(m, 3.5) is None, "after the grace the report wins"


def test_cancelled_reservation_is_removed() -> None:
    m = membership()
    m.register(spec(), [], now=0.0)
    m.reserve("w1", "m", "ai/m", now=0.0)
    assert runners(m, 0.0)[("w1", "m")].pending
    m.cancel_reservation("w1", "m")
    assert runners(m, 0.0) == {}


def test_failed_runner_stays_failed_until_a_new_generation() -> None:
    m = membership()
    m.register(spec(), [report(generation=1)], now=0.0)
    assert not m.mark_failed("w1", "m", generation=0, error="x"), "stale generation ignored"
    assert m.mark_failed("w1", "m", generation=1, error="died")
    m.heartbeat("w1", [report(generation=1)], 100, now=1.0)
    assert state_of(m, 1.0) is RunnerState.FAILED
    assert runners(m, 1.0)[("w1", "m")].report.error == "died"
    m.heartbeat("w1", [report(generation=2)], 100, now=2.0)
    assert state_of(m, 2.0) is RunnerState.READY


def test_worker_reporting_stopped_removes_the_runner() -> None:
    m = membership()
    m.register(spec(), [report()], now=0.0)
    m.heartbeat("w1", [report(state=RunnerState.STOPPED)], 100, now=1.0)
    assert state_of(m, 1.0) is None


def test_unload_takes_the_runner_out_of_routing_then_forgets_it() -> None:
    m = membership()
    m.register(spec(), [report()], now=0.0)
    generation = m.begin_unload("w1", "m")
    assert generation == 1
    m.heartbeat("w1", [report()], 100, now=0.5)
    assert not m.snapshot(0.5, {}).replicas("m"), "a READY report does not revive it"
    m.finish_unload("w1", "m", generation)
    assert state_of(m, 0.5) is None


def test_finish_unload_leaves_a_new_load_alone() -> None:
    m = membership()
    m.register(spec(), [report()], now=0.0)
    generation = m.begin_unload("w1", "m")
    assert generation is not None
    m.reserve("w1", "m", "ai/m", now=0.1)
    m.finish_unload("w1", "m", generation)
    assert runners(m, 0.1)[("w1", "m")].pending


def test_worker_without_heartbeats_is_dead_at_once_and_removed_by_expiry() -> None:
    m = membership()
    m.register(spec("w1"), [report()], now=0.0)
    m.register(spec("w2", "h:2"), [report()], now=0.0)
    m.heartbeat("w2", [report()], 100, now=5.0)
    assert m.is_alive("w1", TIMEOUT)
    assert not m.is_alive("w1", TIMEOUT + 0.1)
    snap = m.snapshot(TIMEOUT + 0.1, {})
    assert [r.worker_id for r in snap.replicas("m")] == ["w2"]
    assert [w.worker_id for w in snap.alive_workers()] == ["w2"]
    assert m.expire_dead(TIMEOUT + 0.1) == [spec("w1")]
    assert not m.heartbeat("w1", [], 0, now=TIMEOUT + 0.2)


def test_heartbeat_updates_free_memory_and_keeps_the_worker_alive() -> None:
    m = membership()
    m.register(spec(), [], now=0.0)
    for now in (5.0, 10.0, 15.0):
        assert m.heartbeat("w1", [], 42, now=now)
    assert m.expire_dead(15.0) == []
    [worker] = m.snapshot(15.0, {}).workers
    assert worker.alive and worker.spec.memory_free_bytes == 42


def test_snapshot_is_a_copy() -> None:
    m = membership()
    m.register(spec(), [report()], now=0.0)
    before = m.snapshot(0.0, {("w1", "m"): 2})
    m.touch("w1", "m", now=3.0, assigned=True)
    m.heartbeat("w1", [], 100, now=4.0)
    assert before.replicas("m")[0].in_flight == 2
    assert before.replicas("m")[0].last_used is None


def _replica_ids(m: Membership, model_id: str, now: float) -> set[str]:
    return {r.worker_id for r in m.replicas(model_id, now, {})}


def test_per_model_index_follows_every_change() -> None:
    """`replicas` reads an index, not the workers: it must agree with the snapshot after each
    kind of change."""
    m = membership()
    m.register(spec("w1"), [report("a")], now=0.0)
    m.register(spec("w2", "h:2"), [report("a"), report("b")], now=0.0)
    assert _replica_ids(m, "a", 0.0) == {"w1", "w2"}
    m.heartbeat("w2", [report("b")], 100, now=1.0)  # w2 dropped a
    assert _replica_ids(m, "a", 1.0) == {"w1"}
    m.reserve("w2", "c", "ai/c", now=1.0)
    assert _replica_ids(m, "c", 1.0) == {"w2"}
    m.cancel_reservation("w2", "c")
    assert _replica_ids(m, "c", 1.0) == set()
    m.register(spec("w1", "h:9"), [report("b")], now=2.0)  # re-registered without a
    assert _replica_ids(m, "a", 2.0) == set()
    assert _replica_ids(m, "b", 2.0) == {"w1", "w2"}
    m.heartbeat("w1", [report("b")], 100, now=7.5)
    assert m.expire_dead(7.5) == [spec("w2", "h:2")]
    assert _replica_ids(m, "b", 7.5) == {"w1"}
    generation = m.begin_unload("w1", "b")
    assert generation is not None
    m.finish_unload("w1", "b", generation)
    assert _replica_ids(m, "b", 7.5) == set()
    assert m.snapshot(7.5, {}).runners() == ()


def test_views_are_reused_until_the_runner_or_its_load_changes() -> None:
    m = membership()
    m.register(spec(), [report("a")], now=0.0)
    [first] = m.replicas("a", 0.0, {})
    [again] = m.replicas("a", 0.0, {})
    assert again is first
    [busy] = m.replicas("a", 0.0, {("w1", "a"): 1})
    assert busy.in_flight == 1
    m.touch("w1", "a", now=3.0, assigned=True)
    [touched] = m.replicas("a", 3.0, {("w1", "a"): 1})
    assert (touched.last_used, touched.last_assigned, touched.in_flight) == (3.0, 3.0, 1)
    m.heartbeat("w1", [report("a", RunnerState.FAILED)], 100, now=4.0)
    [failed] = m.replicas("a", 4.0, {})
    assert failed.state is RunnerState.FAILED and not failed.routable


def test_expiry_grace_keeps_workers_the_scheduler_was_too_busy_to_hear() -> None:
    m = membership()
    m.register(spec(), [report("a")], now=0.0)
    assert m.expire_dead(TIMEOUT + 3.0, grace=5.0) == []
    assert _replica_ids(m, "a", TIMEOUT + 3.0) == {"w1"}, "routing agrees with the sweep"
    assert m.expire_dead(TIMEOUT + 3.0, grace=0.0) == [spec()]
