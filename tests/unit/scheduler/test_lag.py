from __future__ import annotations

import pytest

from services.scheduler.lag import LagTracker


def test_grace_is_the_largest_lag_within_the_window() -> None:
    lag = LagTracker(window=10.0)
    assert lag.grace(0.0) == 0.0
    lag.record(1.0, 0.2)
    lag.record(2.0, 3.5)
    lag.record(3.0, -1.0)  # early wake-ups count as none
    assert lag.grace(3.0) == 3.5
    assert lag.grace(11.5) == 3.5
    assert lag.grace(12.5) == 0.0, "the 3.5 s lag left the window"


def test_samples_are_bounded() -> None:
    lag = LagTracker(window=1e9, max_samples=2)
    lag.record(0.0, 9.0)
    lag.record(1.0, 1.0)
    lag.record(2.0, 2.0)
    assert lag.grace(2.0) == 2.0


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LagTracker(window=0.0)
