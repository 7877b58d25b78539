"""The worker's own Prometheus metrics (`modelrunner_worker_*`).

llama.cpp's metrics are not repeated here: they stay llama-server's, fetched through
ScrapeMetrics (metrics.py) and merged by the gateway. Events are counted where they happen (the
pool and the blob cache call `WorkerMetrics`); levels are read from the pool when Prometheus
scrapes (`WorkerCollector`), so a request pays nothing for them. `model` labels are model
references (bounded by what the worker loads); outcomes and reasons are fixed sets.

    modelrunner_worker_runner_starts_total{outcome}       runner starts: ready, failed, cancelled
    modelrunner_worker_runner_restarts_total              starts that replaced a runner of the
                                                          same model (failed, or new options)
    modelrunner_worker_runner_crashes_total               runners that died after being READY
    modelrunner_worker_load_duration_seconds              blob fetch + start until READY
    modelrunner_worker_blob_fetches_total{outcome}        downloads from the registry
    modelrunner_worker_blob_fetch_bytes_total             bytes received from the registry
    modelrunner_worker_blob_fetch_duration_seconds        successful downloads
    modelrunner_worker_upstream_errors_total{reason}      runner requests that failed:
                                                          connection_lost, timeout, other
    modelrunner_worker_runners{state}                     runners by state (scrape time)
    modelrunner_worker_requests_in_flight{model}          leased requests, Generate and
                                                          ScrapeMetrics (scrape time)
    modelrunner_worker_memory_reserved_bytes              memory of live runners (scrape time)
    modelrunner_worker_blob_cache_bytes                   verified blobs cached (scrape time)
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.metrics import DURATION_BUCKETS
from services.worker.errors import UpstreamError
from services.worker.runner import LIVE_STATES, RunnerSnapshot, RunnerState

__all__ = [
    "START_OUTCOMES",
    "UPSTREAM_REASONS",
    "WorkerCollector",
    "WorkerMetrics",
    "start_outcome",
]

_PREFIX = "modelrunner_worker_"
START_OUTCOMES = ("ready", "failed", "cancelled")
UPSTREAM_REASONS = ("connection_lost", "timeout", "other")
_FETCH_OUTCOMES = ("success", "failure")


def _upstream_reason(error: UpstreamError) -> str:
    if error.connection_lost:
        return "connection_lost"
    if isinstance(error.__cause__, TimeoutError):
        return "timeout"
    return "other"


class WorkerMetrics:
    """Counters and histograms, registered on `registry` (a private one when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        starts = Counter(
            _PREFIX + "runner_starts", "Runner starts, by outcome.", ["outcome"], registry=r
        )
        self._starts = {outcome: starts.labels(outcome) for outcome in START_OUTCOMES}
        self._restarts = Counter(
            _PREFIX + "runner_restarts",
            "Runner starts that replaced a runner of the same model (it failed, or the options "
            "changed).",
            registry=r,
        )
        self._crashes = Counter(
            _PREFIX + "runner_crashes",
            "Runners whose backend (llama-server) died after it was READY.",
            registry=r,
        )
        self._load_seconds = Histogram(
            _PREFIX + "load_duration_seconds",
            "Time from a Load to its runner being READY: blob fetch and start.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        fetches = Counter(
            _PREFIX + "blob_fetches",
            "Blob downloads from the registry, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._fetches = {outcome: fetches.labels(outcome) for outcome in _FETCH_OUTCOMES}
        self._fetch_bytes = Counter(
            _PREFIX + "blob_fetch_bytes", "Bytes received from the registry.", registry=r
        )
        self._fetch_seconds = Histogram(
            _PREFIX + "blob_fetch_duration_seconds",
            "Time to download and verify one blob (successful downloads).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        upstream = Counter(
            _PREFIX + "upstream_errors",
            "Requests to a runner that failed, by reason (connection_lost, timeout, other).",
            ["reason"],
            registry=r,
        )
        self._upstream = {reason: upstream.labels(reason) for reason in UPSTREAM_REASONS}

    def runner_started(self, error: BaseException | None, seconds: float) -> None:
        """A start ended after `seconds`: READY (no error), failed or cancelled."""
        outcome = start_outcome(error)
        self._starts[outcome].inc()
        if error is None:
            self._load_seconds.observe(seconds)

    def runner_restarted(self) -> None:
        self._restarts.inc()

    def runner_crashed(self) -> None:
        self._crashes.inc()

    def blob_received(self, count: int) -> None:
        self._fetch_bytes.inc(count)

    def blob_fetched(self, seconds: float | None) -> None:
        """One download ended: in `seconds`, or failed (None)."""
        if seconds is None:
            self._fetches["failure"].inc()
            return
        self._fetches["success"].inc()
        self._fetch_seconds.observe(seconds)

    def upstream_failed(self, error: UpstreamError) -> None:
        self._upstream[_upstream_reason(error)].inc()


def start_outcome(error: BaseException | None) -> str:
    """The `outcome` label of a runner start that ended with `error` (None: READY)."""
    if error is None:
        return "ready"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "failed"


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, documentation, labels=list(labels))


class WorkerCollector(Collector):
    """The pool's levels at scrape time; runs on the event loop (services/common/metrics.py)."""

    def __init__(
        self,
        runners: Callable[[], list[RunnerSnapshot]],
        cache_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self._runners = runners
        self._cache_bytes = cache_bytes

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            _gauge("runners", "Runners by state.", ["state"]),
            _gauge("requests_in_flight", "Requests holding a runner's lease.", ["model"]),
            _gauge("memory_reserved_bytes", "Memory of the runners that may hold some."),
            _gauge("blob_cache_bytes", "Bytes of verified blobs in the worker's cache."),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        snapshots = self._runners()
        runners, in_flight, memory, cache = self._families()
        states = Tally(snapshot.state for snapshot in snapshots)
        for state in RunnerState:
            runners.add_metric([state.value], states[state])
        requests: Tally[str] = Tally()
        for snapshot in snapshots:
            requests[snapshot.reference or snapshot.model_id] += snapshot.in_flight
        for model, count in sorted(requests.items()):
            in_flight.add_metric([model], count)
        memory.add_metric([], sum(s.memory_bytes for s in snapshots if s.state in LIVE_STATES))
        cache.add_metric([], self._cache_bytes())
        yield from (runners, in_flight, memory, cache)
