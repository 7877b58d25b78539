"""Gathering the metrics of every READY runner: one ScrapeMetrics call per worker, concurrently,
after the fleet summary (fleet.py) built from the same placements.

The scheduler's placements say which workers run READY runners; each of those workers is asked
once, under GATEWAY_METRICS_TIMEOUT. A worker that fails or is too slow is left out with a
warning and the rest are still served, as DMR skips a runner it cannot scrape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from modelrunner.v1 import common_pb2, scheduler_pb2, worker_pb2
from services.gateway.clients import SchedulerClient, WorkerChannels
from services.gateway.metrics.aggregate import (
    NO_ACTIVE_RUNNERS,
    RunnerText,
    aggregate,
    runner_labels,
)
from services.gateway.metrics.fleet import fleet_families, render_fleet

__all__ = ["MetricsCollector", "WorkerTarget", "ready_workers"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerTarget:
    worker_id: str
    address: str


def ready_workers(placements: Iterable[scheduler_pb2.Placement]) -> list[WorkerTarget]:
    """Each worker with at least one READY runner, once, ordered by worker id."""
    targets = {
        WorkerTarget(placement.worker_id, placement.worker_address)
        for placement in placements
        if placement.runner.state == common_pb2.RUNNER_STATE_READY
    }
    return sorted(targets, key=lambda target: (target.worker_id, target.address))


class MetricsCollector:
    def __init__(
        self, scheduler: SchedulerClient, workers: WorkerChannels, *, timeout: float
    ) -> None:
        self._scheduler = scheduler
        self._workers = workers
        self._timeout = timeout

    async def render(self) -> str:
        """The fleet summary (fleet.py), then the runners' aggregated metrics;
        grpc.aio.AioRpcError when the scheduler cannot list placements."""
        placements, workers = await asyncio.gather(
            self._scheduler.list_placements(), self._workers_or_none()
        )
        summary = render_fleet(fleet_families(placements, workers)).decode()
        return summary + await self._runners(placements)

    async def _workers_or_none(self) -> Sequence[scheduler_pb2.WorkerStatus] | None:
        """The scheduler's worker list, None (summary without it) when that call fails."""
        try:
            return await self._scheduler.list_workers()
        except grpc.aio.AioRpcError as exc:
            _log.warning("worker summary left out: %s: %s", exc.code().name, exc.details())
            return None

    async def _runners(self, placements: Iterable[scheduler_pb2.Placement]) -> str:
        targets = ready_workers(placements)
        if not targets:
            return NO_ACTIVE_RUNNERS
        replies = await asyncio.gather(*(self._scrape(target) for target in targets))
        runners = [
            RunnerText(
                text=entry.text,
                labels=runner_labels(
                    model=entry.reference or entry.model_id, worker=target.worker_id
                ),
                source=f"{entry.reference or entry.model_id} on {target.worker_id}",
            )
            for target, reply in zip(targets, replies, strict=True)
            for entry in reply
        ]
        result = aggregate(runners)
        for reason in result.skipped:
            _log.warning("metrics left out: %s", reason)
        return result.text

    async def _scrape(self, target: WorkerTarget) -> list[worker_pb2.RunnerMetrics]:
        lease = await self._workers.acquire(target.address)
        try:
            reply = await lease.stub.ScrapeMetrics(
                worker_pb2.ScrapeMetricsRequest(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            _log.warning(
                "metrics of worker %s (%s) left out: %s: %s",
                target.worker_id,
                target.address,
                exc.code().name,
                exc.details(),
            )
            return []
        finally:
            await lease.release()
        return list(reply.runners)
