from __future__ import annotations

import pytest

from services.scheduler.routing import RouteRequest, least_loaded
from services.scheduler.snapshot import RunnerState, RunnerView
from tests.unit.scheduler.views import runner

CASES = [
    pytest.param([], None, id="no replicas"),
    pytest.param([runner("a", in_flight=3), runner("b", in_flight=1)], "b", id="least in flight"),
    pytest.param(
        [runner("a", last_assigned=20.0), runner("b", last_assigned=10.0)],
        "b",
        id="equal load: least recently assigned",
    ),
    pytest.param(
        [runner("a", last_assigned=5.0), runner("b")],
        "b",
        id="never assigned beats assigned",
    ),
    pytest.param([runner("b"), runner("a")], "a", id="full tie: lowest worker id"),
    pytest.param(
        [runner("a", in_flight=5), runner("b", state=RunnerState.FAILED)],
        "a",
        id="failed replica never chosen",
    ),
    pytest.param(
        [runner("a", in_flight=5), runner("b", pending=True, state=RunnerState.STARTING)],
        "a",
        id="loading replica never chosen",
    ),
    pytest.param(
        [runner("a", state=RunnerState.DRAINING)],
        None,
        id="draining replica never chosen",
    ),
    pytest.param([runner("a", "other")], None, id="other model ignored"),
]


@pytest.mark.parametrize(("replicas", "expected"), CASES)
def test_least_loaded(replicas: list[RunnerView], expected: str | None) -> None:
    chosen = least_loaded(replicas, RouteRequest(model_id="m", affinity_key="session-1"))
    assert (chosen.worker_id if chosen else None) == expected
