from __future__ import annotations

import pytest

from services.scheduler.placement import choose_worker
from services.scheduler.snapshot import ClusterSnapshot, RunnerState
from tests.unit.scheduler.views import runner, snapshot, worker

CASES = [
    pytest.param(snapshot(), {}, None, id="no workers"),
    pytest.param(snapshot(worker("a", alive=False)), {}, None, id="only a dead worker"),
    pytest.param(
        snapshot(worker("a", free=1), worker("b", free=5), worker("c", free=3)),
        {},
        "b",
        id="most free memory",
    ),
    pytest.param(
        snapshot(worker("a", free=9, alive=False), worker("b", free=1)),
        {},
        "b",
        id="dead worker skipped however much memory it has",
    ),
    pytest.param(
        snapshot(
            worker("a", free=5, runners=(runner("a", "x"), runner("a", "y"))),
            worker("b", free=5, runners=(runner("b", "x"),)),
        ),
        {},
        "b",
        id="equal memory: fewest runners",
    ),
    pytest.param(
        snapshot(worker("b", free=5), worker("a", free=5)),
        {},
        "a",
        id="full tie: lowest id",
    ),
    pytest.param(
        snapshot(
            worker("a", free=9),
            worker("b", free=1, runners=(runner("b", "m", state=RunnerState.STARTING),)),
        ),
        {},
        "b",
        id="join a worker already starting the model",
    ),
    pytest.param(
        snapshot(
            worker("a", free=9, runners=(runner("a", "m", state=RunnerState.FAILED),)),
            worker("b", free=1),
        ),
        {},
        "b",
        id="avoid the worker where the model just failed",
    ),
    pytest.param(
        snapshot(worker("a", free=9, runners=(runner("a", "m", state=RunnerState.FAILED),))),
        {},
        "a",
        id="failed worker still used when it is the only one",
    ),
    pytest.param(
        snapshot(
            worker("a", free=9, tags={"accelerator": "cpu"}),
            worker("b", free=1, tags={"accelerator": "nvidia", "zone": "x"}),
        ),
        {"accelerator": "nvidia"},
        "b",
        id="required tag",
    ),
    pytest.param(
        snapshot(worker("a", free=9, tags={"accelerator": "nvidia"})),
        {"accelerator": "nvidia", "zone": "x"},
        None,
        id="all required tags must match",
    ),
]


@pytest.mark.parametrize(("cluster", "tags", "expected"), CASES)
def test_choose_worker(
    cluster: ClusterSnapshot, tags: dict[str, str], expected: str | None
) -> None:
    chosen = choose_worker(cluster, "m", tags)
    assert (chosen.worker_id if chosen else None) == expected
