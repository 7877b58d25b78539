"""Pull/push progress as DMR reports it, and DMR's throttling of per-layer updates.

One `TransferEvent` is one line of DMR's progress stream (`{type, message, total, layer, mode}`).
A layer's update is passed on when at least `interval` seconds or `min_bytes` bytes have gone by
since the last one passed on for that layer, and always when the layer completes
(DMR `pkg/distribution/internal/progress/reporter.go`).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.common.clock import Clock
from services.registry.model_store import Model
from services.registry.store.manifests import Descriptor

__all__ = [
    "EventType",
    "LayerProgress",
    "ProgressSink",
    "Throttle",
    "TransferEvent",
    "format_bytes",
    "progress_event",
]


class EventType(enum.Enum):
    PROGRESS = "progress"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class LayerProgress:
    id: str
    size: int
    current: int


@dataclass(frozen=True)
class TransferEvent:
    type: EventType
    message: str
    mode: str
    total: int = 0
    layer: LayerProgress | None = None
    model: Model | None = None
    # For ERROR events: the gRPC status name the error maps to.
    error_code: str = ""


# Receives (digest, bytes done so far) for one layer; awaited, so a slow reader slows the transfer.
ProgressSink = Callable[[str, int], Awaitable[None]]


def format_bytes(count: int) -> str:
    """DMR's decimal units: "12.34 MB"."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.2f} {unit}" if unit != "B" else f"{count} B"
        value /= 1000
    raise AssertionError("unreachable")


class Throttle:
    """Decides which byte counts of one layer become progress events."""

    def __init__(self, clock: Clock, *, size: int, interval: float, min_bytes: int) -> None:
        self._clock = clock
        self._size = size
        self._interval = interval
        self._min_bytes = min_bytes
        self._last_time: float | None = None
        self._last_bytes = -1

    def should_emit(self, current: int) -> bool:
        now = self._clock.monotonic()
        if current == self._last_bytes:
            return False
        due = (
            self._last_time is None
            or current >= self._size
            or now - self._last_time >= self._interval
            or current - self._last_bytes >= self._min_bytes
        )
        if due:
            self._last_time = now
            self._last_bytes = current
        return due


def progress_event(layer: Descriptor, current: int, total: int, mode: str) -> TransferEvent:
    verb = "Downloaded" if mode == "pull" else "Uploaded"
    return TransferEvent(
        EventType.PROGRESS,
        f"{verb}: {format_bytes(current)}",
        mode,
        total=total,
        layer=LayerProgress(id=layer.digest, size=layer.size, current=current),
    )
