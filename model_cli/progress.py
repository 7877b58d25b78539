"""Transfer progress on the terminal: rich live bars per layer (bytes, speed, ETA) when the output
is a terminal, one plain line per update otherwise (throttled per layer, always at a layer's end),
so logs and pipes get readable text instead of cursor movements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from model_cli.errors import StreamError
from model_cli.wire import TransferEvent
from services.common.clock import Clock

__all__ = [
    "LiveDisplay",
    "PlainDisplay",
    "ProgressDisplay",
    "Verbs",
    "open_display",
    "show_transfer",
    "verbs_for",
]

_ALREADY_EXISTS = "Layer already exists"


@dataclass(frozen=True)
class Verbs:
    active: str
    done: str


_VERBS = {
    "pull": Verbs("Downloading", "Downloaded"),
    "push": Verbs("Uploading", "Pushed"),
    "upload": Verbs("Uploading", "Uploaded"),
}


def verbs_for(mode: str) -> Verbs:
    return _VERBS.get(mode, _VERBS["pull"])


class ProgressDisplay(Protocol):
    def update(
        self, key: str, label: str, current: int, size: int, *, exists: bool = False
    ) -> None:
        """Bytes done so far for one item (a layer, a file); `exists`: nothing to transfer."""
        ...

    def note(self, message: str) -> None:
        """A message that belongs above the bars (a warning)."""
        ...

    def close(self) -> None: ...


class LiveDisplay:
    """rich bars, one per item; started on the first update so a cache hit shows no empty bars."""

    def __init__(self, console: Console, verbs: Verbs) -> None:
        self._verbs = verbs
        self._progress = Progress(
            TextColumn("{task.fields[state]:<11} {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._started = False

    def update(
        self, key: str, label: str, current: int, size: int, *, exists: bool = False
    ) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        task = self._tasks.get(key)
        if task is None:
            task = self._progress.add_task(label, total=size or None, state=self._verbs.active)
            self._tasks[key] = task
        done = exists or (size > 0 and current >= size)
        state = "Exists" if exists else self._verbs.done if done else self._verbs.active
        self._progress.update(task, completed=current, total=size or None, state=state)

    def note(self, message: str) -> None:
        self._progress.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        if self._started:
            self._progress.stop()


@dataclass
class _ItemState:
    last_line_at: float
    finished: bool = False


@dataclass
class PlainDisplay:
    """One line per update, at most one per item every `interval` seconds, plus each item's end."""

    console: Console
    verbs: Verbs
    clock: Clock
    interval: float
    _items: dict[str, _ItemState] = field(default_factory=dict)

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(
        self, key: str, label: str, current: int, size: int, *, exists: bool = False
    ) -> None:
        now = self.clock.monotonic()
        state = self._items.get(key)
        if state is not None and state.finished:
            return
        if exists:
            self._items[key] = _ItemState(now, finished=True)
            self._line(f"{label}: already exists")
            return
        if size > 0 and current >= size:
            self._items[key] = _ItemState(now, finished=True)
            self._line(f"{self.verbs.done} {label}: {decimal(size)}")
            return
        if state is not None and now - state.last_line_at < self.interval:
            return
        self._items[key] = _ItemState(now)
        if size > 0:
            percent = current * 100 // size
            self._line(
                f"{self.verbs.active} {label}: {decimal(current)} / {decimal(size)} ({percent}%)"
            )
        else:
            self._line(f"{self.verbs.active} {label}: {decimal(current)}")

    def note(self, message: str) -> None:
        self._line(message)

    def close(self) -> None:
        return None


def open_display(console: Console, mode: str, *, clock: Clock, interval: float) -> ProgressDisplay:
    """Live bars on a terminal, plain lines anywhere else."""
    verbs = verbs_for(mode)
    if console.is_terminal:
        return LiveDisplay(console, verbs)
    return PlainDisplay(console, verbs, clock, interval)


def _error_text(message: str) -> str:
    text = message.strip()
    return text.removeprefix("Error:").strip() or "the transfer failed"


def show_transfer(
    events: Iterable[TransferEvent],
    console: Console,
    mode: str,
    *,
    clock: Clock,
    interval: float,
) -> str:
    """Display a pull/push stream; returns its success message. StreamError when the stream
    reports an error or ends without success (a gateway that died mid-transfer)."""
    display = open_display(console, mode, clock=clock, interval=interval)
    success: str | None = None
    try:
        for event in events:
            if event.type == "error":
                raise StreamError(_error_text(event.message))
            if event.type == "success":
                success = event.message or "done"
            elif event.type == "warning":
                display.note(f"Warning: {event.message}")
            elif event.layer is not None:
                layer = event.layer
                display.update(
                    layer.id,
                    layer.short_id,
                    layer.current,
                    layer.size,
                    exists=event.message.startswith(_ALREADY_EXISTS),
                )
    finally:
        display.close()
    if success is None:
        raise StreamError(f"the {mode} ended before it reported success")
    return success
