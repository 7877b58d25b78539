"""What `ListPlacements` and `ListWorkers` report: pure functions of a cluster snapshot.

Times in a snapshot are monotonic; the reports give Unix seconds, so the caller passes the
offset between the two clocks (`to_wall`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.scheduler.snapshot import ClusterSnapshot, RunnerState, RunnerView, WorkerView

__all__ = ["PlacementStatus", "WorkerStatus", "placement_statuses", "worker_statuses"]


@dataclass(frozen=True)
class PlacementStatus:
    runner: RunnerView
    # Unix seconds; None when never used / never expiring.
    last_used: float | None
    expires: float | None
    queued: int
    worker_tags: Mapping[str, str]


@dataclass(frozen=True)
class WorkerStatus:
    worker: WorkerView
    # Unix seconds.
    last_seen: float
    memory_reserved_bytes: int


def placement_statuses(
    snapshot: ClusterSnapshot,
    *,
    to_wall: float,
    keep_alive_for: Callable[[str], float | None],
    waiting: Callable[[str], int],
) -> list[PlacementStatus]:
    """Every runner on an alive worker, with when it was used and when it will be unloaded."""
    statuses = []
    for worker in snapshot.alive_workers():
        for runner in worker.runners:
            keep_alive = keep_alive_for(runner.model_id)
            last_used = None if runner.last_used is None else runner.last_used + to_wall
            expires = None if keep_alive is None else runner.idle_since + keep_alive + to_wall
            statuses.append(
                PlacementStatus(
                    runner=runner,
                    last_used=last_used,
                    expires=expires,
                    queued=waiting(runner.model_id),
                    worker_tags=worker.spec.tags,
                )
            )
    return statuses


def worker_statuses(snapshot: ClusterSnapshot, *, to_wall: float) -> list[WorkerStatus]:
    """Every known worker, alive or not yet expired, with the memory its runners reserve."""
    return [
        WorkerStatus(
            worker=worker,
            last_seen=worker.last_seen + to_wall,
            memory_reserved_bytes=sum(
                r.report.memory_bytes
                for r in worker.runners
                if r.state not in (RunnerState.FAILED, RunnerState.STOPPED)
            ),
        )
        for worker in snapshot.workers
    ]
