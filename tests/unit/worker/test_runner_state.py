"""The runner state machine: one table, every other transition raises."""

from __future__ import annotations

import itertools

import pytest

from services.worker.errors import InvalidTransitionError
from services.worker.runner import RunnerState, check_transition

S = RunnerState
ALLOWED = {
    (S.STARTING, S.READY),
    (S.STARTING, S.STOPPED),
    (S.STARTING, S.FAILED),
    (S.READY, S.DRAINING),
    (S.READY, S.FAILED),
    (S.DRAINING, S.STOPPED),
    (S.DRAINING, S.FAILED),
}


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED, key=str))
def test_allowed(current: RunnerState, target: RunnerState) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [pair for pair in itertools.product(S, S) if pair not in ALLOWED],
    ids=lambda state: state.name,
)
def test_forbidden(current: RunnerState, target: RunnerState) -> None:
    with pytest.raises(InvalidTransitionError, match=f"{current.name} to {target.name}"):
        check_transition(current, target)
