"""Human output: docker-style borderless tables, sizes and durations, and `--json` printing.
Pure functions of the gateway's JSON plus the current time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TextIO

from rich.table import Table

__all__ = [
    "configurations_table",
    "disk_usage_table",
    "generic_table",
    "human_duration",
    "human_size",
    "models_table",
    "print_json",
    "running_table",
    "short_id",
    "until_text",
    "verify_table",
]

Json = Any
_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def print_json(value: Json, out: TextIO) -> None:
    """`--json` output: indented, keys in the gateway's order, one trailing newline."""
    out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    out.flush()


def human_size(count: float) -> str:
    """Decimal units with four significant digits, as docker prints sizes ("98.07MB")."""
    value = float(count)
    for unit in _SIZE_UNITS:
        if abs(value) < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{value:.4g}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """Go's units.HumanDuration: "Less than a second", "About a minute", "3 hours", "2 weeks"."""
    s = abs(seconds)
    if s < 1:
        return "Less than a second"
    if s < 2:
        return "1 second"
    if s < 60:
        return f"{int(s)} seconds"
    minutes = s / 60
    if minutes < 2:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    days = hours / 24
    if days < 14:
        return f"{int(days)} days"
    if days < 90:
        return f"{int(days / 7)} weeks"
    if days < 730:
        return f"{int(days / 30)} months"
    return f"{int(days / 365)} years"


def short_id(model_id: str) -> str:
    """`sha256:<64 hex>` -> the 12 hex characters docker shows."""
    return model_id.partition(":")[2][:12] if ":" in model_id else model_id[:12]


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def models_table(models: Iterable[Mapping[str, Json]], now: float) -> Table:
    """`ls`: one row per tag, as DMR lists models."""
    table = _table(
        "MODEL NAME",
        "PARAMETERS",
        "QUANTIZATION",
        "ARCHITECTURE",
        "MODEL ID",
        "CREATED",
        "CONTEXT",
        "SIZE",
    )
    for model in models:
        config = model.get("config") or {}
        created = model.get("created")
        age = (
            f"{human_duration(now - float(created))} ago"
            if isinstance(created, (int, float)) and created > 0
            else ""
        )
        context = config.get("context_size")
        row = [
            str(config.get("parameters") or ""),
            str(config.get("quantization") or ""),
            str(config.get("architecture") or ""),
            short_id(str(model.get("id") or "")),
            age,
            str(context) if context else "",
            str(config.get("size") or ""),
        ]
        for tag in model.get("tags") or ["<none>"]:
            table.add_row(str(tag), *row)
    return table


def _parse_time(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def until_text(row: Mapping[str, Json], now: float) -> str:
    """When a loaded model will be unloaded, as DMR's `ps` says it."""
    if row.get("loading"):
        return "Loading..."
    if str(row.get("keep_alive")) == "-1":
        return "Forever"
    expires = _parse_time(row.get("expires_at"))
    if expires is None:
        return "-"
    if expires <= now:
        return "Now"
    return f"in {human_duration(expires - now).lower()}"


def running_table(rows: Iterable[Mapping[str, Json]], now: float) -> Table:
    """`ps`: DMR's columns, then where the runner lives and how busy it is."""
    table = _table("MODEL NAME", "BACKEND", "MODE", "WORKER", "STATE", "IN FLIGHT", "UNTIL")
    for row in rows:
        table.add_row(
            str(row.get("model_name") or ""),
            str(row.get("backend_name") or ""),
            str(row.get("mode") or ""),
            str(row.get("worker_id") or ""),
            str(row.get("state") or ""),
            str(row.get("in_flight", "")),
            until_text(row, now),
        )
    return table


def workers_table(rows: Iterable[Mapping[str, Json]], now: float) -> Table:
    """`workers`: the fleet as the scheduler sees it."""
    table = _table(
        "WORKER", "ADDRESS", "STATE", "TAGS", "MEMORY FREE / TOTAL", "RESERVED", "RUNNERS", "SEEN"
    )
    for row in rows:
        tags = row.get("tags")
        seen = row.get("last_seen")
        table.add_row(
            str(row.get("worker_id") or ""),
            str(row.get("address") or ""),
            _worker_state(row),
            ",".join(f"{k}={v}" for k, v in tags.items()) if isinstance(tags, dict) else "",
            f"{_cell('bytes', row.get('memory_free_bytes', 0))} / "
            f"{_cell('bytes', row.get('memory_total_bytes', 0))}",
            _cell("bytes", row.get("memory_reserved_bytes", 0)),
            str(row.get("runners", "")),
            f"{human_duration(now - seen)} ago" if isinstance(seen, (int, float)) else "never",
        )
    return table


def _worker_state(row: Mapping[str, Json]) -> str:
    if not row.get("alive"):
        return "dead"
    return "draining" if row.get("draining") else "alive"


def _cell(key: str, value: Json) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if any(word in key for word in ("bytes", "usage", "size")):
            return human_size(value)
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


def generic_table(rows: Iterable[Mapping[str, Json]]) -> Table:
    """Rows of unknown shape: one column per key, in order of first appearance."""
    listed = list(rows)
    keys: list[str] = []
    for row in listed:
        keys.extend(key for key in row if key not in keys)
    table = _table(*(key.upper().replace("_", " ") for key in keys))
    for row in listed:
        table.add_row(*(_cell(key, row.get(key)) for key in keys))
    return table


def disk_usage_table(usage: Mapping[str, Json]) -> Table:
    """`df`: the store and the inference engine, as DMR prints them."""
    table = _table("TYPE", "SIZE")
    table.add_row("Models", _cell("usage", usage.get("models_disk_usage", 0)))
    table.add_row("Inference engine", _cell("usage", usage.get("default_backend_disk_usage", 0)))
    return table


def configurations_table(entries: Iterable[Mapping[str, Json]]) -> Table:
    """`configure show`: the gateway's `GET /engines/_configure` entries."""
    table = _table("MODEL", "MODEL ID", "BACKEND", "MODE", "CONFIG")
    for entry in entries:
        table.add_row(
            str(entry.get("Model") or ""),
            short_id(str(entry.get("ModelID") or "")),
            str(entry.get("Backend") or ""),
            str(entry.get("Mode") or ""),
            _cell("config", entry.get("Config")),
        )
    return table


def verify_table(blobs: Iterable[Mapping[str, Json]]) -> Table:
    """`verify`: one row per blob that is not ok, with the models it breaks."""
    table = _table("BLOB", "STATUS", "SIZE", "MODELS", "DETAIL")
    for blob in blobs:
        table.add_row(
            short_id(str(blob.get("digest") or "")),
            str(blob.get("status") or ""),
            human_size(float(blob.get("size") or 0)),
            ", ".join(str(model) for model in blob.get("models") or []) or "(none)",
            str(blob.get("detail") or ""),
        )
    return table
