"""The scheduler's view of the fleet, summarized on the gateway's `/metrics` page.

A deployment that scrapes only the gateway (as DMR's users scrape DMR) still sees where models
run and how loaded each worker is. Built at scrape time from what the page already asks the
scheduler (its placements) plus its worker list, so serving requests pays nothing for it. Labels
are bounded: model references (bounded by the store), worker ids (bounded by the fleet) and the
fixed runner states. The series are named after the gateway that serves them; the scheduler's own
port has the authoritative `modelrunner_scheduler_*` equivalents.

    modelrunner_gateway_fleet_runners{model,worker,state}          runners (replicas), by state
    modelrunner_gateway_fleet_runner_leases{model,worker}          requests leased to each runner
    modelrunner_gateway_fleet_queued_requests{model}               requests waiting for a model
    modelrunner_gateway_fleet_workers{state}                       workers alive or lost
    modelrunner_gateway_fleet_worker_memory_reserved_bytes{worker} memory the scheduler counts taken
    modelrunner_gateway_fleet_worker_memory_total_bytes{worker}    memory a worker reported
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelrunner.v1 import common_pb2, scheduler_pb2

__all__ = ["fleet_families", "render_fleet"]

_PREFIX = "modelrunner_gateway_fleet_"


def _state(value: common_pb2.RunnerState.ValueType) -> str:
    return common_pb2.RunnerState.Name(value).removeprefix("RUNNER_STATE_").lower()


def fleet_families(
    placements: Iterable[scheduler_pb2.Placement],
    workers: Sequence[scheduler_pb2.WorkerStatus] | None,
) -> list[Metric]:
    """`workers` None: the worker list could not be had, and its families are left out."""
    runners = GaugeMetricFamily(
        f"{_PREFIX}runners",
        "Runners (loaded model replicas) as the scheduler places them, by state.",
        labels=("model", "worker", "state"),
    )
    leases = GaugeMetricFamily(
        f"{_PREFIX}runner_leases",
        "Requests the scheduler has leased to each runner.",
        labels=("model", "worker"),
    )
    queued = GaugeMetricFamily(
        f"{_PREFIX}queued_requests",
        "Requests waiting in the scheduler's queue for a model.",
        labels=("model",),
    )
    counts: dict[tuple[str, str, str], int] = {}
    waiting: dict[str, int] = {}
    for placement in placements:
        model = placement.runner.reference or placement.runner.model_id
        key = (model, placement.worker_id, _state(placement.runner.state))
        counts[key] = counts.get(key, 0) + 1
        leases.add_metric((model, placement.worker_id), placement.in_flight)
        # Every replica of a model reports the same queue.
        waiting[model] = max(waiting.get(model, 0), placement.queued)
    for labels, count in counts.items():
        runners.add_metric(labels, count)
    for model, count in waiting.items():
        queued.add_metric((model,), count)
    families: list[Metric] = [runners, leases, queued]
    if workers is not None:
        families.extend(_worker_families(workers))
    return families


def _worker_families(workers: Sequence[scheduler_pb2.WorkerStatus]) -> Iterator[Metric]:
    states = GaugeMetricFamily(
        f"{_PREFIX}workers", "Workers the scheduler knows, alive or lost.", labels=("state",)
    )
    alive = sum(1 for status in workers if status.alive)
    states.add_metric(("alive",), alive)
    states.add_metric(("lost",), len(workers) - alive)
    yield states
    reserved = GaugeMetricFamily(
        f"{_PREFIX}worker_memory_reserved_bytes",
        "Memory the scheduler counts as taken on each worker (its runners' estimates).",
        labels=("worker",),
    )
    total = GaugeMetricFamily(
        f"{_PREFIX}worker_memory_total_bytes",
        "Memory each worker reported when it registered.",
        labels=("worker",),
    )
    for status in workers:
        reserved.add_metric((status.worker.worker_id,), status.memory_reserved_bytes)
        total.add_metric((status.worker.worker_id,), status.worker.memory_total_bytes)
    yield reserved
    yield total


class _Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render_fleet(families: Sequence[Metric]) -> bytes:
    """The families in text format 0.0.4."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
