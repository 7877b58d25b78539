"""The scheduler's levels, read from the control plane when Prometheus scrapes.

    modelrunner_scheduler_queue_depth{model}        requests waiting for the model (the HPA in
                                                    deploy/ scales on this exact name)
    modelrunner_scheduler_workers{state}            registered workers, alive or dead (missed
                                                    heartbeats, not yet dropped)
    modelrunner_scheduler_workers_by_tag{tag,value} alive workers carrying each tag (accelerator,
                                                    WORKER_TAGS)
    modelrunner_scheduler_replicas{model,state}     runners on alive workers: starting, ready,
                                                    draining, failed
    modelrunner_scheduler_leases_in_flight          requests assigned and not yet released

Every model the scheduler tracks (waiters, replicas or a configuration) gets a queue depth, 0
when nothing waits, so the series exists before the first burst. It runs on the event loop (see
services/common/metrics.py), which owns the state it reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.scheduler.control import ControlPlane
from services.scheduler.snapshot import RunnerState, RunnerView

__all__ = ["SchedulerCollector"]

_PREFIX = "modelrunner_scheduler_"
_REPLICA_STATES = ("starting", "ready", "draining", "failed")


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            _PREFIX + "queue_depth", "Requests waiting for a model.", labels=["model"]
        ),
        GaugeMetricFamily(
            _PREFIX + "workers", "Registered workers by state (alive, dead).", labels=["state"]
        ),
        GaugeMetricFamily(
            _PREFIX + "workers_by_tag",
            "Alive workers carrying each tag.",
            labels=["tag", "value"],
        ),
        GaugeMetricFamily(
            _PREFIX + "replicas",
            "Runners on alive workers by model and state (starting, ready, draining, failed).",
            labels=["model", "state"],
        ),
        GaugeMetricFamily(_PREFIX + "leases_in_flight", "Requests assigned and not yet released."),
    )


def _replica_state(runner: RunnerView) -> str | None:
    if runner.pending or runner.state is RunnerState.STARTING:
        return "starting"
    if runner.state in (RunnerState.READY, RunnerState.DRAINING, RunnerState.FAILED):
        return runner.state.name.lower()
    return None


class SchedulerCollector(Collector):
    def __init__(self, control: ControlPlane) -> None:
        self._control = control

    def describe(self) -> Iterable[Metric]:
        return _families()

    def collect(self) -> Iterator[Metric]:
        control = self._control
        snapshot = control.snapshot()
        depth, workers, by_tag, replicas, leases = _families()
        names = {model_id: model.reference for model_id, model in control.replicas.models.items()}

        def name_of(model_id: str, fallback: str = "") -> str:
            return names.get(model_id) or fallback or model_id

        queued: Counter[str] = Counter()
        for model_id in names:
            queued[name_of(model_id)] += 0
        for model_id, waiting in control.queue.depths().items():
            queued[name_of(model_id)] += waiting
        for model, waiting in sorted(queued.items()):
            depth.add_metric([model], waiting)
        yield depth

        alive = snapshot.alive_workers()
        workers.add_metric(["alive"], len(alive))
        workers.add_metric(["dead"], len(snapshot.workers) - len(alive))
        yield workers

        tags: Counter[tuple[str, str]] = Counter(
            item for worker in alive for item in worker.spec.tags.items()
        )
        for (tag, value), count in sorted(tags.items()):
            by_tag.add_metric([tag, value], count)
        yield by_tag

        states: Counter[tuple[str, str]] = Counter()
        models = {name_of(model_id) for model_id in names}
        for runner in snapshot.runners():
            model = name_of(runner.model_id, runner.report.reference)
            models.add(model)
            state = _replica_state(runner)
            if state is not None:
                states[(model, state)] += 1
        for model in sorted(models):
            for state in _REPLICA_STATES:
                replicas.add_metric([model, state], states[(model, state)])
        yield replicas

        leases.add_metric([], len(control.leases))
        yield leases
