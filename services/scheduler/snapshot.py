"""Immutable views of the cluster: what placement, routing and the reaper decide from.

`Membership` builds a `ClusterSnapshot` on demand; nothing in a snapshot changes afterwards, so
the policies are pure functions of it and can be tested with hand-built values.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ClusterSnapshot",
    "RunnerReport",
    "RunnerState",
    "RunnerView",
    "WorkerSpec",
    "WorkerView",
]


class RunnerState(enum.IntEnum):
    """Mirrors modelrunner.v1.RunnerState. The values follow the lifecycle, so for one process
    generation the larger value is the later state (a late STARTING report never undoes READY)."""

    UNSPECIFIED = 0
    STARTING = 1
    READY = 2
    DRAINING = 3
    STOPPED = 4
    FAILED = 5


def _frozen_tags(tags: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(tags))


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker says about itself when it registers."""

    worker_id: str
    address: str
    tags: Mapping[str, str] = field(default_factory=dict)
    memory_total_bytes: int = 0
    memory_free_bytes: int = 0
    # Bytes of model blobs in the worker's cache (for /engines/df).
    cache_bytes: int = 0
    # Runners the worker runs at once (its WORKER_MAX_RUNNERS); 0: it did not say, no limit.
    max_runners: int = 0
    # Shutting down (HeartbeatRequest.draining): it serves what it runs, takes no new load.
    draining: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", _frozen_tags(self.tags))


@dataclass(frozen=True)
class RunnerReport:
    """One runner as its worker reports it (RunnerInfo)."""

    model_id: str
    reference: str = ""
    state: RunnerState = RunnerState.READY
    generation: int = 0
    in_flight: int = 0
    memory_bytes: int = 0
    error: str = ""
    context_size: int = 0
    # llama-server slots; 0 when the worker did not say (an adopted runner of an older worker).
    parallel: int = 0


@dataclass(frozen=True)
class RunnerView:
    worker_id: str
    worker_address: str
    report: RunnerReport
    # Leases the scheduler holds on this runner.
    in_flight: int = 0
    # A load this scheduler started is still in progress.
    pending: bool = False
    # Monotonic seconds.
    first_seen: float = 0.0
    last_used: float | None = None
    last_assigned: float | None = None

    @property
    def model_id(self) -> str:
        return self.report.model_id

    @property
    def state(self) -> RunnerState:
        return self.report.state

    @property
    def routable(self) -> bool:
        return self.report.state is RunnerState.READY and not self.pending

    @property
    def idle_since(self) -> float:
        """Keep-alive counts from the last use, or from when the runner appeared if never used."""
        return self.first_seen if self.last_used is None else self.last_used

    @property
    def busy(self) -> bool:
        """Serving requests. The worker's own count matters only for runners this scheduler never
        assigned (adopted after a restart): their requests hold no lease here."""
        return self.in_flight > 0 or (self.last_assigned is None and self.report.in_flight > 0)


@dataclass(frozen=True)
class WorkerView:
    spec: WorkerSpec
    last_seen: float
    alive: bool
    runners: tuple[RunnerView, ...] = ()

    @property
    def worker_id(self) -> str:
        return self.spec.worker_id

    @property
    def address(self) -> str:
        return self.spec.address

    def runner(self, model_id: str) -> RunnerView | None:
        for runner in self.runners:
            if runner.model_id == model_id:
                return runner
        return None


@dataclass(frozen=True)
class ClusterSnapshot:
    taken_at: float
    workers: tuple[WorkerView, ...] = ()

    def alive_workers(self) -> tuple[WorkerView, ...]:
        return tuple(worker for worker in self.workers if worker.alive)

    def runners(self) -> tuple[RunnerView, ...]:
        """Every runner on an alive worker; a dead worker's runners are gone at once."""
        return tuple(runner for worker in self.alive_workers() for runner in worker.runners)

    def replicas(self, model_id: str) -> tuple[RunnerView, ...]:
        """READY runners of the model that requests may be routed to."""
        return tuple(r for r in self.runners() if r.model_id == model_id and r.routable)
