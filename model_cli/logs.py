"""`logs`: the local stack's log files, merged by time, optionally followed.

`make run` writes one file per service to MODEL_RUNNER_LOG_DIR (`registry.log`, `scheduler.log`,
`worker.log`, `gateway.log`); the worker writes each llama-server's output to
WORKER_RUNTIME_DIR/logs/<runner>.log. Service records start with a timestamp and are merged in
time order (a record's continuation lines, e.g. a traceback, stay with it); llama-server lines
have no timestamp and follow, prefixed with their runner.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from model_cli.errors import LogsError

__all__ = [
    "ENGINE",
    "SERVICES",
    "LogFollower",
    "LogSource",
    "history",
    "log_sources",
    "read_source",
]

SERVICES = ("registry", "scheduler", "worker", "gateway")
ENGINE = "llama-server"
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?")


@dataclass(frozen=True)
class LogSource:
    name: str
    path: Path
    # Lines of engine logs carry no service name; they get this prefix.
    prefix: str = ""


def _engine_sources(runtime_dir: Path) -> list[LogSource]:
    directory = runtime_dir / "logs"
    if not directory.is_dir():
        return []
    return [
        LogSource(f"{ENGINE}/{path.stem}", path, prefix=f"[{ENGINE} {path.stem}] ")
        for path in sorted(directory.glob("*.log"))
    ]


def log_sources(
    log_dir: Path, runtime_dir: Path, services: Sequence[str], *, engines: bool
) -> list[LogSource]:
    """The files to show. LogsError when the directory is missing, a service asked for by name
    has no log, or there is nothing at all."""
    if not log_dir.is_dir():
        raise LogsError(
            f"no log directory at {log_dir.absolute()}: the local stack (`make run`) writes the "
            "services' logs there; start it, or set MODEL_RUNNER_LOG_DIR to where they log"
        )
    chosen = [s for s in services if s != ENGINE] if services else list(SERVICES)
    sources: list[LogSource] = []
    for service in chosen:
        path = log_dir / f"{service}.log"
        if path.is_file():
            sources.append(LogSource(service, path))
        elif services:
            raise LogsError(f"no {service} log at {path.absolute()}")
    if ENGINE in services or (engines and not services):
        sources.extend(_engine_sources(runtime_dir))
    if not sources:
        raise LogsError(f"no log files in {log_dir.absolute()}")
    return sources


def _records(lines: Iterable[str]) -> Iterator[tuple[str, list[str]]]:
    """(timestamp, lines) per record; lines before the first timestamp form their own record."""
    stamp = ""
    record: list[str] = []
    for line in lines:
        match = _TIMESTAMP.match(line)
        if match and record:
            yield stamp, record
            record = []
        if match:
            stamp = match.group(0)
        record.append(line)
    if record:
        yield stamp, record


def read_source(source: LogSource) -> tuple[list[str], int]:
    """The file's complete lines and the offset after the last one; a line still being written
    is left for the follower."""
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        raise LogsError(f"cannot read {source.path}: {exc.strerror or exc}") from None
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", errors="replace")
    return [source.prefix + line for line in text.splitlines()], end


def history(
    contents: Sequence[tuple[LogSource, list[str]]], *, tail: int | None = None
) -> list[str]:
    """Everything logged so far: services merged by time, then each engine log. `tail` keeps the
    last lines of the merged services' log and of each engine log, as `docker logs` does per
    container."""
    services = [lines for source, lines in contents if not source.prefix]
    merged: deque[str] = deque(maxlen=tail)
    for _, record in heapq.merge(*(list(_records(lines)) for lines in services), key=_stamp):
        merged.extend(record)
    kept = list(merged)
    for source, lines in contents:
        if source.prefix:
            kept.extend(lines if tail is None else lines[max(0, len(lines) - tail) :])
    return kept


def _stamp(record: tuple[str, list[str]]) -> str:
    return record[0]


@dataclass
class _Cursor:
    offset: int
    partial: bytes = b""


@dataclass
class LogFollower:
    """`logs -f`: prints lines appended to the files after `offsets`, polling through `wait`.
    A truncated (rotated) file is read again from its start; new engine logs are picked up."""

    sources: list[LogSource]
    offsets: dict[Path, int]
    discover: Callable[[], list[LogSource]]
    out: TextIO
    _cursors: dict[Path, _Cursor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for source in self.sources:
            self._cursors[source.path] = _Cursor(self.offsets.get(source.path, 0))

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def poll(self) -> int:
        """Print whatever was appended since the last poll; returns how many lines."""
        known = {source.path for source in self.sources}
        for source in self.discover():
            if source.path not in known:
                self.sources.append(source)
                self._cursors[source.path] = _Cursor(0)
        printed = 0
        for source in self.sources:
            printed += self._drain(source)
        if printed:
            self.out.flush()
        return printed

    def _drain(self, source: LogSource) -> int:
        cursor = self._cursors[source.path]
        size = self._size(source.path)
        if size < cursor.offset:
            cursor.offset, cursor.partial = 0, b""
        if size == cursor.offset:
            return 0
        try:
            with source.path.open("rb") as handle:
                handle.seek(cursor.offset)
                data = handle.read(size - cursor.offset)
        except OSError:
            return 0
        cursor.offset += len(data)
        *complete, cursor.partial = (cursor.partial + data).split(b"\n")
        for raw in complete:
            self.out.write(source.prefix + raw.decode("utf-8", errors="replace") + "\n")
        return len(complete)

    def follow(self, wait: Callable[[], None]) -> None:
        """Poll until `wait` raises (KeyboardInterrupt on Ctrl-C)."""
        while True:
            self.poll()
            wait()
