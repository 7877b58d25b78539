"""Which worker should load a model: a pure function of a cluster snapshot.

Order of preference, first difference wins:
1. a worker already starting this model (joining a load beats starting a second one);
2. a worker where the model did NOT just fail (a retry after a crash goes elsewhere if it can);
3. the most free memory;
4. the fewest runners (loads in progress count, so concurrent cold loads spread out);
5. the worker id, so equal workers always give the same answer.
Memory fit (does the model fit at all) is a later refinement; `required_tags` already filters.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.scheduler.snapshot import ClusterSnapshot, RunnerState, WorkerView

__all__ = ["choose_worker", "matches_tags"]


def matches_tags(worker: WorkerView, required_tags: Mapping[str, str]) -> bool:
    """True when the worker carries every required tag with the same value."""
    return all(worker.spec.tags.get(key) == value for key, value in required_tags.items())


def choose_worker(
    snapshot: ClusterSnapshot,
    model_id: str,
    required_tags: Mapping[str, str] | None = None,
) -> WorkerView | None:
    """The alive worker that should load `model_id`, or None when no worker qualifies."""
    candidates = [
        worker for worker in snapshot.alive_workers() if matches_tags(worker, required_tags or {})
    ]
    if not candidates:
        return None

    def preference(worker: WorkerView) -> tuple[bool, bool, int, int, str]:
        runner = worker.runner(model_id)
        starting = runner is not None and runner.state is RunnerState.STARTING
        failed = runner is not None and runner.state is RunnerState.FAILED
        return (
            not starting,
            failed,
            -worker.spec.memory_free_bytes,
            len(worker.runners),
            worker.worker_id,
        )

    return min(candidates, key=preference)
