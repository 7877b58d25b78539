"""The store's size, for Prometheus, without walking the disk on every scrape.

    modelrunner_registry_store_size_bytes        bytes of complete blobs under MODELS_PATH/blobs
    modelrunner_registry_store_blobs             complete blobs
    modelrunner_registry_store_incomplete_bytes  bytes of partial downloads (`.incomplete`)

`refresh()` (awaited by the metrics server before each scrape) walks the tree in a thread at
most once per `interval` seconds; concurrent scrapes share one walk. `collect()` reports the
last walk.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.clock import Clock
from services.registry.store.blobs import INCOMPLETE_SUFFIX

__all__ = ["StoreStats", "StoreUsage", "measure_store"]

_PREFIX = "modelrunner_registry_store_"


@dataclass(frozen=True)
class StoreUsage:
    blob_bytes: int = 0
    blobs: int = 0
    incomplete_bytes: int = 0


def measure_store(models_path: Path) -> StoreUsage:
    """Walk `blobs/<algorithm>/` (blocking: run it in a thread)."""
    blob_bytes = blobs = incomplete = 0
    try:
        algorithms = [entry for entry in os.scandir(models_path / "blobs") if entry.is_dir()]
    except FileNotFoundError:
        return StoreUsage()
    for algorithm in algorithms:
        try:
            entries = list(os.scandir(algorithm.path))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # deleted or renamed while we walked
            if entry.name.endswith(INCOMPLETE_SUFFIX):
                incomplete += size
            else:
                blob_bytes += size
                blobs += 1
    return StoreUsage(blob_bytes=blob_bytes, blobs=blobs, incomplete_bytes=incomplete)


class StoreStats(Collector):
    def __init__(self, models_path: Path, *, interval: float, clock: Clock) -> None:
        self._models_path = models_path
        self._interval = interval
        self._clock = clock
        self._usage: StoreUsage | None = None
        self._measured_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            now = self._clock.monotonic()
            if self._usage is not None and now - self._measured_at < self._interval:
                return
            self._usage = await asyncio.to_thread(measure_store, self._models_path)
            self._measured_at = self._clock.monotonic()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(_PREFIX + "size_bytes", "Bytes of complete blobs in the store."),
            GaugeMetricFamily(_PREFIX + "blobs", "Complete blobs in the store."),
            GaugeMetricFamily(
                _PREFIX + "incomplete_bytes", "Bytes of partial downloads in the store."
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        usage = self._usage
        if usage is None:
            return  # not measured yet: no figure rather than a false zero
        size, blobs, incomplete = self._families()
        size.add_metric([], usage.blob_bytes)
        blobs.add_metric([], usage.blobs)
        incomplete.add_metric([], usage.incomplete_bytes)
        yield from (size, blobs, incomplete)
