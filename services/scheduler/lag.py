"""How late the scheduler's own event loop has been running, for the dead-worker sweep.

A worker is declared dead when no heartbeat was processed for `worker_timeout`. When the loop
itself falls behind (a flood of Assigns on a small machine), heartbeats that arrived sit
unprocessed and live workers would look dead: dropping them would turn overload into an outage.
A periodic task that knows when it meant to wake measures the loop's lag each time it runs; the
sweep then grants the largest lag seen within the last `window` seconds as extra time.
"""

from __future__ import annotations

from collections import deque

__all__ = ["LagTracker"]


class LagTracker:
    """The largest loop lag seen within the last `window` seconds (monotonic time)."""

    def __init__(self, *, window: float, max_samples: int = 1024) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self._window = window
        # (when measured, lag); bounded, oldest first.
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def record(self, now: float, lag: float) -> None:
        """The loop woke at `now`, `lag` seconds after it was due (negative counts as 0)."""
        self._samples.append((now, max(0.0, lag)))

    def grace(self, now: float) -> float:
        """The largest lag measured within the window ending at `now`; 0 when none."""
        samples = self._samples
        while samples and now - samples[0][0] > self._window:
            samples.popleft()
        return max((lag for _, lag in samples), default=0.0)
