from __future__ import annotations

from collections.abc import Mapping

import pytest

from services.scheduler.memory import MemoryEstimate
from services.scheduler.placement import (
    PlacementPlan,
    PlacementRefusal,
    available_bytes,
    matches_tags,
    plan_placement,
)
from services.scheduler.snapshot import ClusterSnapshot, RunnerState, RunnerView, WorkerView
from tests.unit.scheduler.views import runner, snapshot, worker

GiB = 1 << 30


def need(total: int) -> MemoryEstimate:
    return MemoryEstimate(
        weights_bytes=total - total // 4,
        kv_cache_bytes=total // 4,
        overhead_bytes=0,
        context_size=4096,
        parallel=2,
    )


def everything(_: RunnerView) -> bool:
    return True


def nothing(_: RunnerView) -> bool:
    return False


def plan(
    cluster: ClusterSnapshot,
    size: int = GiB,
    *,
    tags: Mapping[str, str] | None = None,
    evictable: object = everything,
    exclude: frozenset[str] = frozenset(),
) -> PlacementPlan | PlacementRefusal:
    return plan_placement(
        cluster,
        "m",
        "ai/m:latest",
        need(size),
        required_tags=tags or {},
        evictable=evictable,  # type: ignore[arg-type]
        exclude_workers=exclude,
    )


def chosen(result: PlacementPlan | PlacementRefusal) -> str | None:
    return result.worker.worker_id if isinstance(result, PlacementPlan) else None


# --- available_bytes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        pytest.param(worker("a", total=0, free=5 * GiB), None, id="unknown capacity"),
        pytest.param(worker("a", total=8 * GiB), 8 * GiB, id="empty, free not reported"),
        pytest.param(
            worker("a", total=8 * GiB, runners=(runner("a", "x", memory_bytes=3 * GiB),)),
            5 * GiB,
            id="capacity minus runners",
        ),
        pytest.param(
            worker("a", total=8 * GiB, free=2 * GiB, runners=(runner("a", "x", memory_bytes=GiB),)),
            2 * GiB,
            id="free is smaller (memory used outside the runners)",
        ),
        pytest.param(
            worker(
                "a",
                total=8 * GiB,
                free=6 * GiB,
                runners=(
                    runner("a", "x", memory_bytes=GiB),
                    runner(
                        "a", "y", memory_bytes=2 * GiB, pending=True, state=RunnerState.STARTING
                    ),
                ),
            ),
            4 * GiB,
            id="pending load not yet in the free figure",
        ),
        pytest.param(
            worker(
                "a",
                total=8 * GiB,
                runners=(runner("a", "y", memory_bytes=3 * GiB, state=RunnerState.STARTING),),
            ),
            5 * GiB,
            id="starting placeholder counts",
        ),
        pytest.param(
            worker(
                "a",
                total=8 * GiB,
                runners=(
                    runner("a", "x", memory_bytes=3 * GiB, state=RunnerState.FAILED),
                    runner("a", "y", memory_bytes=3 * GiB, state=RunnerState.STOPPED),
                ),
            ),
            8 * GiB,
            id="failed and stopped runners hold nothing",
        ),
        pytest.param(
            worker("a", total=2 * GiB, runners=(runner("a", "x", memory_bytes=3 * GiB),)),
            0,
            id="floored at zero",
        ),
    ],
)
def test_available_bytes(view: WorkerView, expected: int | None) -> None:
    assert available_bytes(view) == expected


def test_matches_tags() -> None:
    gpu = worker("a", tags={"accelerator": "nvidia", "zone": "x"})
    assert matches_tags(gpu, {})
    assert matches_tags(gpu, {"accelerator": "nvidia"})
    assert not matches_tags(gpu, {"accelerator": "cpu"})
    assert not matches_tags(gpu, {"accelerator": "nvidia", "gpu": "h100"})


# --- choosing a worker -----------------------------------------------------------------------

CHOICES = [
    pytest.param(
        snapshot(
            worker("a", total=2 * GiB), worker("b", total=6 * GiB), worker("c", total=4 * GiB)
        ),
        "b",
        id="most memory left",
    ),
    pytest.param(
        snapshot(worker("a", total=9 * GiB, alive=False), worker("b", total=2 * GiB)),
        "b",
        id="dead worker skipped",
    ),
    pytest.param(
        snapshot(
            worker("a", total=5 * GiB, runners=(runner("a", "x"), runner("a", "y"))),
            worker("b", total=5 * GiB, runners=(runner("b", "x"),)),
        ),
        "b",
        id="equal memory: fewest runners",
    ),
    pytest.param(
        snapshot(worker("b", total=5 * GiB), worker("a", total=5 * GiB)), "a", id="tie: lowest id"
    ),
    pytest.param(
        snapshot(
            worker("a", total=9 * GiB),
            worker(
                "b",
                total=2 * GiB,
                runners=(runner("b", "m", state=RunnerState.STARTING, memory_bytes=GiB),),
            ),
        ),
        "b",
        id="join a worker already starting the model",
    ),
    pytest.param(
        snapshot(
            worker("a", total=9 * GiB, runners=(runner("a", "m", state=RunnerState.FAILED),)),
            worker("b", total=2 * GiB),
        ),
        "b",
        id="avoid the worker where the model just failed",
    ),
    pytest.param(
        snapshot(worker("a", total=9 * GiB, runners=(runner("a", "m", state=RunnerState.FAILED),))),
        "a",
        id="failed worker still used when it is the only one",
    ),
    pytest.param(
        snapshot(
            worker("a", total=2 * GiB, runners=(runner("a", "x", memory_bytes=2 * GiB),)),
            worker("b", total=GiB + 1),
        ),
        "b",
        id="fitting without eviction beats more memory after eviction",
    ),
    pytest.param(
        snapshot(worker("a", total=0), worker("b", total=2 * GiB)),
        "b",
        id="known capacity preferred over unknown",
    ),
    pytest.param(
        snapshot(worker("a", total=0), worker("b", total=GiB // 2)),
        "a",
        id="unknown capacity fits anything",
    ),
]


@pytest.mark.parametrize(("cluster", "expected"), CHOICES)
def test_choice(cluster: ClusterSnapshot, expected: str) -> None:
    result = plan(cluster)
    assert chosen(result) == expected
    assert isinstance(result, PlacementPlan) and result.evict == ()


def test_required_tags_filter_workers() -> None:
    cluster = snapshot(
        worker("a", total=9 * GiB, tags={"accelerator": "cpu"}),
        worker("b", total=2 * GiB, tags={"accelerator": "nvidia", "zone": "x"}),
    )
    assert chosen(plan(cluster, tags={"accelerator": "nvidia"})) == "b"
    refusal = plan(cluster, tags={"accelerator": "nvidia", "zone": "y"})
    assert isinstance(refusal, PlacementRefusal)
    assert not refusal.insufficient_memory
    assert refusal.reason == "no alive worker has tags {accelerator=nvidia, zone=y}"


def test_no_worker_at_all() -> None:
    refusal = plan(snapshot(worker("a", total=9 * GiB, alive=False)))
    assert isinstance(refusal, PlacementRefusal)
    assert not refusal.insufficient_memory
    assert refusal.reason == "no worker available to serve ai/m:latest"


def test_exclude_workers() -> None:
    cluster = snapshot(worker("a", total=9 * GiB), worker("b", total=2 * GiB))
    assert chosen(plan(cluster, exclude=frozenset({"a"}))) == "b"
    refusal = plan(cluster, exclude=frozenset({"a", "b"}))
    assert isinstance(refusal, PlacementRefusal)
    assert not refusal.insufficient_memory
    assert refusal.reason == "ai/m:latest already runs on every alive worker (2)"


# --- eviction --------------------------------------------------------------------------------


def test_evicts_least_recently_used_first_and_only_what_is_needed() -> None:
    runners = (
        runner("a", "recent", memory_bytes=GiB, last_used=900.0),
        runner("a", "oldest", memory_bytes=GiB, last_used=100.0),
        runner("a", "never-used", memory_bytes=GiB, first_seen=300.0),
        runner("a", "old", memory_bytes=GiB, last_used=200.0),
    )
    cluster = snapshot(worker("a", total=5 * GiB, runners=runners))
    result = plan(cluster, 3 * GiB)
    assert isinstance(result, PlacementPlan)
    assert [r.model_id for r in result.evict] == ["oldest", "old"]


def test_only_evictable_runners_are_evicted() -> None:
    runners = (
        runner("a", "busy", memory_bytes=2 * GiB, last_used=1.0, in_flight=1),
        runner("a", "idle", memory_bytes=2 * GiB, last_used=5.0),
    )
    cluster = snapshot(worker("a", total=4 * GiB, runners=runners))
    result = plan(cluster, 2 * GiB, evictable=lambda r: not r.busy)
    assert isinstance(result, PlacementPlan)
    assert [r.model_id for r in result.evict] == ["idle"]


def test_loading_runners_are_never_evicted() -> None:
    loading = runner("a", "x", memory_bytes=3 * GiB, pending=True, state=RunnerState.STARTING)
    refusal = plan(snapshot(worker("a", total=4 * GiB, runners=(loading,))), 2 * GiB)
    # It fits once the load is done and idle: wait for it, not 507.
    assert isinstance(refusal, PlacementRefusal) and refusal.busy
    assert not refusal.insufficient_memory


def test_fewest_evictions_win() -> None:
    small = tuple(runner("a", f"s{i}", memory_bytes=GiB, last_used=float(i)) for i in range(3))
    big = (runner("b", "big", memory_bytes=3 * GiB, last_used=50.0),)
    cluster = snapshot(
        worker("a", total=3 * GiB, runners=small), worker("b", total=3 * GiB, runners=big)
    )
    result = plan(cluster, 2 * GiB)
    assert isinstance(result, PlacementPlan)
    assert result.worker.worker_id == "b"
    assert [r.model_id for r in result.evict] == ["big"]


def test_eviction_counts_pending_loads_against_free_memory() -> None:
    """free=3 GiB but a 2 GiB load is still in progress: only 1 GiB is really there, so the
    idle runner must go."""
    runners = (
        runner("a", "loading", memory_bytes=2 * GiB, pending=True, state=RunnerState.STARTING),
        runner("a", "idle", memory_bytes=GiB, last_used=1.0),
    )
    cluster = snapshot(worker("a", total=16 * GiB, free=3 * GiB, runners=runners))
    result = plan(cluster, 2 * GiB)
    assert isinstance(result, PlacementPlan)
    assert [r.model_id for r in result.evict] == ["idle"]


# --- refusal ---------------------------------------------------------------------------------


def test_refusal_when_nothing_fits_even_after_eviction() -> None:
    cluster = snapshot(
        worker("small", total=4 * GiB, tags={"gpu": "h100"}),
        worker(
            "large",
            total=8 * GiB,
            tags={"gpu": "h100"},
            runners=(runner("large", "x", memory_bytes=2 * GiB),),
        ),
        worker("other", total=64 * GiB, tags={"gpu": "a10"}),
    )
    refusal = plan(cluster, 9 * GiB, tags={"gpu": "h100"})
    assert isinstance(refusal, PlacementRefusal)
    assert refusal.insufficient_memory
    reason = refusal.reason
    assert reason.startswith("ai/m:latest needs 9.0 GiB (weights 6.8 GiB + KV cache 2.2 GiB")
    assert "2 x 4096-token slots" in reason
    assert "with tags {gpu=h100}" in reason
    assert "8.0 GiB (large, 8.0 GiB total" in reason


def test_refusal_counts_only_evictable_memory() -> None:
    cluster = snapshot(
        worker("a", total=8 * GiB, runners=(runner("a", "x", memory_bytes=4 * GiB),))
    )
    assert chosen(plan(cluster, 6 * GiB, evictable=everything)) == "a"
    busy = plan(cluster, 6 * GiB, evictable=nothing)
    assert isinstance(busy, PlacementRefusal) and busy.busy and not busy.insufficient_memory
    assert "fits worker(s) a" in busy.reason
    refusal = plan(cluster, 9 * GiB, evictable=nothing)
    assert isinstance(refusal, PlacementRefusal) and refusal.insufficient_memory
    assert not refusal.busy
    assert "offer is 4.0 GiB (a," in refusal.reason


@pytest.mark.parametrize(
    ("total", "free", "need", "busy"),
    [
        pytest.param(8, 0, 6, True, id="capacity holds it once the busy runner goes"),
        pytest.param(8, 0, 9, False, id="larger than the worker: 507"),
        pytest.param(8, 5, 6, True, id="free plus the busy runner's memory covers it"),
        pytest.param(8, 1, 6, False, id="memory taken outside the scheduler will not come back"),
    ],
)
def test_busy_versus_never_fits(total: int, free: int, need: int, busy: bool) -> None:
    busy_runner = runner("a", "x", memory_bytes=4 * GiB, in_flight=1)
    cluster = snapshot(worker("a", total=total * GiB, free=free * GiB, runners=(busy_runner,)))
    refusal = plan(cluster, need * GiB, evictable=lambda r: not r.busy)
    assert isinstance(refusal, PlacementRefusal)
    assert (refusal.busy, refusal.insufficient_memory) == (busy, not busy)


def test_max_runners_evicts_an_idle_runner_even_when_memory_fits() -> None:
    runners = (
        runner("a", "old", memory_bytes=GiB, last_used=1.0),
        runner("a", "new", memory_bytes=GiB, last_used=5.0),
    )
    cluster = snapshot(worker("a", total=64 * GiB, max_runners=2, runners=runners))
    result = plan(cluster, GiB)
    assert isinstance(result, PlacementPlan)
    assert [r.model_id for r in result.evict] == ["old"]


def test_max_runners_prefers_a_worker_below_its_limit() -> None:
    full = worker("a", total=64 * GiB, max_runners=1, runners=(runner("a", "x", last_used=1.0),))
    roomy = worker("b", total=8 * GiB, max_runners=2, runners=(runner("b", "y", last_used=1.0),))
    assert chosen(plan(snapshot(full, roomy), GiB)) == "b"


def test_a_worker_at_its_runner_limit_with_busy_runners_means_wait() -> None:
    busy = runner("a", "x", memory_bytes=GiB, in_flight=2)
    cluster = snapshot(worker("a", total=64 * GiB, max_runners=1, runners=(busy,)))
    refusal = plan(cluster, GiB, evictable=lambda r: not r.busy)
    assert isinstance(refusal, PlacementRefusal) and refusal.busy


def test_a_draining_worker_takes_no_new_load() -> None:
    cluster = snapshot(worker("a", total=9 * GiB, draining=True), worker("b", total=2 * GiB))
    assert chosen(plan(cluster)) == "b"
    refusal = plan(snapshot(worker("a", total=9 * GiB, draining=True)))
    assert isinstance(refusal, PlacementRefusal)
    assert not refusal.insufficient_memory
    assert refusal.reason == "every alive worker is shutting down; none can load ai/m:latest"
