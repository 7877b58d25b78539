"""Hand-built snapshot values for the pure-function tests."""

from __future__ import annotations

from collections.abc import Mapping

from services.scheduler.snapshot import (
    ClusterSnapshot,
    RunnerReport,
    RunnerState,
    RunnerView,
    WorkerSpec,
    WorkerView,
)

NOW = 1_000.0


def runner(
    worker_id: str,
    model_id: str = "m",
    *,
    state: RunnerState = RunnerState.READY,
    in_flight: int = 0,
    reported_in_flight: int = 0,
    pending: bool = False,
    first_seen: float = 0.0,
    last_used: float | None = None,
    last_assigned: float | None = None,
    generation: int = 1,
    memory_bytes: int = 0,
    parallel: int = 0,
) -> RunnerView:
    return RunnerView(
        worker_id=worker_id,
        worker_address=f"{worker_id}:1",
        report=RunnerReport(
            model_id=model_id,
            reference=f"ai/{model_id}:latest",
            state=state,
            generation=generation,
            in_flight=reported_in_flight,
            memory_bytes=memory_bytes,
            parallel=parallel,
        ),
        in_flight=in_flight,
        pending=pending,
        first_seen=first_seen,
        last_used=last_used,
        last_assigned=last_assigned,
    )


def worker(
    worker_id: str,
    *,
    free: int = 0,
    total: int = 0,
    alive: bool = True,
    tags: Mapping[str, str] | None = None,
    runners: tuple[RunnerView, ...] = (),
    max_runners: int = 0,
    draining: bool = False,
) -> WorkerView:
    return WorkerView(
        spec=WorkerSpec(
            worker_id=worker_id,
            address=f"{worker_id}:1",
            tags=tags or {},
            memory_free_bytes=free,
            memory_total_bytes=total,
            max_runners=max_runners,
            draining=draining,
        ),
        last_seen=NOW,
        alive=alive,
        runners=runners,
    )


def snapshot(*workers: WorkerView, now: float = NOW) -> ClusterSnapshot:
    return ClusterSnapshot(taken_at=now, workers=workers)
