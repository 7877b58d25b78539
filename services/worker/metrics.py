"""llama-server's Prometheus metrics from every READY runner, fetched concurrently.

Each runner is scraped under its own lease (so it cannot be stopped mid-scrape) and its own
deadline; one that fails or is slow is left out with a warning and never fails the whole scrape,
as in DMR's aggregated `/metrics` handler. Labels are the gateway's business: the text is passed
on exactly as llama-server wrote it.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from services.worker.errors import WorkerError
from services.worker.runner import Runner, RunnerSnapshot, RunnerState

__all__ = ["MetricsLimits", "MetricsScraper", "RunnerMetrics", "RunnerSource"]

_log = logging.getLogger(__name__)


class RunnerSource(Protocol):
    """What the scraper needs of the pool."""

    def snapshot(self) -> list[RunnerSnapshot]: ...

    def acquire(self, model_id: str) -> AbstractAsyncContextManager[Runner]: ...


@dataclass(frozen=True)
class MetricsLimits:
    # Per runner, connecting through reading the whole answer.
    timeout: float
    max_bytes: int


@dataclass(frozen=True)
class RunnerMetrics:
    model_id: str
    reference: str
    # Prometheus text exposition format 0.0.4.
    text: str


class MetricsScraper:
    def __init__(self, runners: RunnerSource, limits: MetricsLimits) -> None:
        self._runners = runners
        self._limits = limits

    async def scrape(self) -> list[RunnerMetrics]:
        """One entry per READY runner that answered in time, ordered by model id."""
        ready = [s for s in self._runners.snapshot() if s.state is RunnerState.READY]
        results = await asyncio.gather(*(self._scrape_one(snapshot) for snapshot in ready))
        return [result for result in results if result is not None]

    async def _scrape_one(self, snapshot: RunnerSnapshot) -> RunnerMetrics | None:
        try:
            async with self._runners.acquire(snapshot.model_id) as runner:
                text = await runner.client.metrics(
                    timeout=self._limits.timeout, max_bytes=self._limits.max_bytes
                )
                return RunnerMetrics(
                    model_id=runner.model_id, reference=runner.reference, text=text
                )
        except WorkerError as exc:
            # Also a runner unloaded or crashed since the snapshot: it has nothing to report.
            _log.warning(
                "metrics of %s (%s) left out: %s",
                snapshot.reference or "?",
                snapshot.model_id[:19],
                exc,
            )
            return None
