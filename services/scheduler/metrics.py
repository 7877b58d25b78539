"""The scheduler's events as Prometheus metrics (`modelrunner_scheduler_*`).

The control plane, loader and replica manager call `SchedulerMetrics` where things happen; levels
(queue depth, workers, replicas, leases) are read at scrape time by `SchedulerCollector`
(metrics_collector.py) instead, so the Assign path does no gauge bookkeeping. Labels are bounded:
`model` is a model reference (bounded by the store), outcomes and reasons are the fixed sets
below; never request, lease or worker ids.

    modelrunner_scheduler_assignments_total{outcome}        Assign calls by result
    modelrunner_scheduler_assign_duration_seconds           successful Assigns, queueing and
                                                            cold loads included
    modelrunner_scheduler_queue_wait_seconds{model}         time in the model's queue, for every
                                                            request that waited, whatever the end
    modelrunner_scheduler_loads_total{model,outcome}        Worker.Load runs by result
    modelrunner_scheduler_load_duration_seconds{model}      loads that became READY
    modelrunner_scheduler_unloads_total{reason}             runners unloaded, by why
    modelrunner_scheduler_placement_refusals_total{reason}  loads no worker could take
    modelrunner_scheduler_workers_lost_total                workers dropped for missed heartbeats
    modelrunner_scheduler_leases_expired_total              leases never released by their worker
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.clock import Clock
from services.common.metrics import DURATION_BUCKETS, LATENCY_BUCKETS
from services.scheduler.errors import (
    InsufficientMemory,
    InvalidRequest,
    LoadFailed,
    LoadTimeout,
    ModelNotFound,
    NoWorkerAvailable,
    QueueFull,
    SchedulerError,
    ShuttingDown,
    Unavailable,
)

__all__ = [
    "ASSIGN_OUTCOMES",
    "LOAD_OUTCOMES",
    "SchedulerMetrics",
    "UnloadReason",
    "assign_outcome",
    "load_outcome",
]

_PREFIX = "modelrunner_scheduler_"

# Most specific first.
_ASSIGN_ERRORS: tuple[tuple[type[SchedulerError], str], ...] = (
    (QueueFull, "queue_full"),
    (InsufficientMemory, "insufficient_memory"),
    (NoWorkerAvailable, "no_worker"),
    (ModelNotFound, "not_found"),
    (LoadTimeout, "timeout"),
    (LoadFailed, "load_failed"),
    (InvalidRequest, "invalid"),
    (Unavailable, "unavailable"),
)
ASSIGN_OUTCOMES = (
    "assigned",
    *(name for _, name in _ASSIGN_ERRORS),
    "cancelled",
    "error",
)
LOAD_OUTCOMES = ("ready", "failed", "timeout", "cancelled")


class UnloadReason(enum.Enum):
    EVICTED = "evicted"  # made room for another model's load
    IDLE = "idle"  # keep-alive ran out
    SCALE_DOWN = "scale_down"  # an extra replica stayed idle
    RECONFIGURED = "reconfigured"  # started with a configuration that changed
    OPERATOR = "operator"  # asked for (`model unload`, /engines/unload)


class _PlacementRefusal(enum.Enum):
    INSUFFICIENT_MEMORY = "insufficient_memory"
    NO_WORKER = "no_worker"
    # Deferred, not refused for good: the request waits for a busy worker to make room.
    WORKERS_BUSY = "workers_busy"


def assign_outcome(error: BaseException) -> str:
    """The `outcome` label of an Assign that raised `error`."""
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    for kind, name in _ASSIGN_ERRORS:
        if isinstance(error, kind):
            return name
    return "error"


def load_outcome(error: SchedulerError | None) -> str:
    """The `outcome` label of a load that ended with `error` (None: READY)."""
    if error is None:
        return "ready"
    if isinstance(error, LoadTimeout):
        return "timeout"
    if isinstance(error, ShuttingDown):
        return "cancelled"
    return "failed"


class SchedulerMetrics:
    """Counters and histograms, registered on `registry` (a private one when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        assignments = Counter(
            _PREFIX + "assignments",
            "Assign calls, by outcome.",
            ["outcome"],
            registry=r,
        )
        # Bound once: the Assign path then costs one increment, no label lookup.
        self._assignments = {name: assignments.labels(name) for name in ASSIGN_OUTCOMES}
        self._assign_seconds = Histogram(
            _PREFIX + "assign_duration_seconds",
            "Time to answer a successful Assign, queueing and cold loads included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._queue_wait = Histogram(
            _PREFIX + "queue_wait_seconds",
            "Time requests spent in a model's queue, whether they were then served or not.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._loads = Counter(
            _PREFIX + "loads",
            "Model loads on workers, by outcome.",
            ["model", "outcome"],
            registry=r,
        )
        self._load_seconds = Histogram(
            _PREFIX + "load_duration_seconds",
            "Time from placing a load to its runner being READY (evictions included).",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        unloads = Counter(
            _PREFIX + "unloads",
            "Runners unloaded, by reason (evicted, idle, scale_down, reconfigured, operator).",
            ["reason"],
            registry=r,
        )
        self._unloads = {reason: unloads.labels(reason.value) for reason in UnloadReason}
        refusals = Counter(
            _PREFIX + "placement_refusals",
            "Loads no worker could take, by reason (insufficient_memory, no_worker, workers_busy).",
            ["reason"],
            registry=r,
        )
        self._refusals = {reason: refusals.labels(reason.value) for reason in _PlacementRefusal}
        self._workers_lost = Counter(
            _PREFIX + "workers_lost",
            "Workers dropped because their heartbeats stopped.",
            registry=r,
        )
        self._leases_expired = Counter(
            _PREFIX + "leases_expired",
            "Leases dropped because their worker never released them.",
            registry=r,
        )

    @contextlib.contextmanager
    def observe_assign(self, clock: Clock) -> Iterator[None]:
        """Count the Assign run inside the block by its outcome, and time it if it succeeds."""
        started = clock.monotonic()
        try:
            yield
        except BaseException as exc:
            self._assignments[assign_outcome(exc)].inc()
            raise
        self._assignments["assigned"].inc()
        self._assign_seconds.observe(clock.monotonic() - started)

    def queue_waited(self, model: str, seconds: float) -> None:
        self._queue_wait.labels(model).observe(seconds)

    def load_finished(self, model: str, error: SchedulerError | None, seconds: float) -> None:
        outcome = load_outcome(error)
        self._loads.labels(model, outcome).inc()
        if error is None:
            self._load_seconds.labels(model).observe(seconds)

    def unloaded(self, reason: UnloadReason, count: int) -> None:
        if count:
            self._unloads[reason].inc(count)

    def placement_refused(self, *, insufficient_memory: bool, busy: bool = False) -> None:
        if busy:
            reason = _PlacementRefusal.WORKERS_BUSY
        elif insufficient_memory:
            reason = _PlacementRefusal.INSUFFICIENT_MEMORY
        else:
            reason = _PlacementRefusal.NO_WORKER
        self._refusals[reason].inc()

    def workers_lost(self, count: int) -> None:
        if count:
            self._workers_lost.inc(count)

    def leases_expired(self, count: int) -> None:
        if count:
            self._leases_expired.inc(count)
