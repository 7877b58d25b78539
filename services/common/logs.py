"""Log set-up shared by the services: one record per line on stderr, with the service's name and
the id of the request being served (see `request_id.py`).

Two formats (`LOG_FORMAT`):

- `json` (the services' default): one JSON object per line, for log collectors —
  `{"ts": "2026-01-01T10:00:03.123Z", "level": "INFO", "service": "scheduler", "logger": "...",
  "message": "...", "request_id": "..."}`, `request_id` only when one is set, `exc` with the
  traceback when the record has one, `stack` with `stack_info`.
- `text`: `2026-01-01 10:00:03,123 INFO scheduler services.scheduler.loader: message`, with
  ` request_id=<id>` appended when one is set; what `model-cli logs` merges by time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson

from services.common.env import SettingError
from services.common.request_id import current_request_id

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "log_handler",
    "parse_log_format",
]

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")


def parse_log_format(value: str, name: str = "LOG_FORMAT") -> LogFormat:
    """For the services' config.py; SettingError unless `json` or `text`."""
    lowered = value.strip().lower()
    if lowered == "json":
        return "json"
    if lowered == "text":
        return "text"
    raise SettingError(f"{name} must be one of {', '.join(LOG_FORMATS)}, got {value!r}")


class _RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the context that logs it.

    A handler filter runs in the emitting task (or thread: asyncio.to_thread copies the context),
    which is where the id is known.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


def _utc_timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds: 2026-01-01T10:00:03.123Z."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc_timestamp(record.created),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return line if request_id is None else f"{line} request_id={request_id}"


def log_handler(
    service: str, log_format: LogFormat, stream: TextIO | None = None
) -> logging.Handler:
    """A handler writing `log_format` lines that carry the request id, to `stream` (stderr)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    formatter = JsonFormatter(service) if log_format == "json" else TextFormatter(service)
    handler.setFormatter(formatter)
    return handler


def configure_logging(service: str, level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Configure the root logger once per process (a no-op if it already has handlers)."""
    logging.basicConfig(level=level.upper(), handlers=[log_handler(service, log_format)])
    # httpx logs every request at INFO; that is the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
