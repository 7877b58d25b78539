"""Protos -> the JSON DMR clients expect: `/models`, OpenAI model lists and the `/engines`
operator views (ps, status, df, workers)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from modelrunner.v1 import common_pb2, registry_pb2, scheduler_pb2

__all__ = [
    "BACKEND_NAME",
    "backend_status",
    "disk_usage",
    "dmr_model",
    "go_duration",
    "keep_alive_text",
    "openai_model",
    "openai_model_list",
    "placement_status",
    "worker_status",
]

BACKEND_NAME = "llama.cpp"

_NANOS_PER_SECOND = 1_000_000_000
_SUBSECOND_UNITS = (("ms", 1_000_000), ("\u00b5s", 1_000), ("ns", 1))

_STATE_NAMES = {
    common_pb2.RUNNER_STATE_UNSPECIFIED: "unknown",
    common_pb2.RUNNER_STATE_STARTING: "starting",
    common_pb2.RUNNER_STATE_READY: "ready",
    common_pb2.RUNNER_STATE_DRAINING: "draining",
    common_pb2.RUNNER_STATE_STOPPED: "stopped",
    common_pb2.RUNNER_STATE_FAILED: "failed",
}


def dmr_model(model: common_pb2.Model) -> dict[str, Any]:
    """DMR's `GET /models` entry: `{id, tags, created, config: {...}}`."""
    config = model.config
    rendered: dict[str, Any] = {
        "format": config.format,
        "quantization": config.quantization,
        "parameters": config.parameters,
        "architecture": config.architecture,
        "size": config.size,
        "gguf": dict(config.gguf),
    }
    # DMR omits an unknown context size rather than printing 0.
    if config.context_size > 0:
        rendered["context_size"] = config.context_size
    return {
        "id": model.id,
        "tags": list(model.tags),
        "created": model.created,
        "config": rendered,
    }


def openai_model(model: common_pb2.Model) -> dict[str, Any]:
    """One entry of OpenAI's model list, with DMR's `dmr` extension object."""
    config = model.config
    details: dict[str, Any] = {
        "architecture": config.architecture,
        "parameters": config.parameters,
        "quantization": config.quantization,
        "size": config.size,
    }
    if config.context_size > 0:
        details = {"context_window": config.context_size, **details}
    return {
        "id": model.tags[0] if model.tags else model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "docker",
        "dmr": details,
    }


def openai_model_list(models: Iterable[common_pb2.Model]) -> dict[str, Any]:
    return {"object": "list", "data": [openai_model(model) for model in models]}


def _rfc3339(unix_ms: int) -> str:
    moment = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() ("5m0s", "1h0m0s", "1.5s", "250ms"), which DMR's keep_alive
    uses; to the nanosecond, as Go keeps it."""
    nanos = round(seconds * _NANOS_PER_SECOND)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < _NANOS_PER_SECOND:
        for unit, size in _SUBSECOND_UNITS:
            if nanos >= size:
                return sign + _decimal(nanos, size) + unit
    whole, fraction = divmod(nanos, _NANOS_PER_SECOND)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = _decimal(secs * _NANOS_PER_SECOND + fraction, _NANOS_PER_SECOND) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    """`value / unit` written without trailing zeros (Go's fmtFrac)."""
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def keep_alive_text(seconds: float) -> str:
    """DMR's keep_alive JSON: "-1" for never, else a Go duration ("0s" unloads after use)."""
    return "-1" if seconds < 0 else go_duration(seconds)


def placement_status(placement: scheduler_pb2.Placement) -> dict[str, Any]:
    """A `/engines/ps` row: DMR's BackendStatus fields, then where and how the runner lives
    (worker, its tags, memory, load: in flight on it and queued for the model; 0 = unknown)."""
    runner = placement.runner
    row: dict[str, Any] = {
        "backend_name": BACKEND_NAME,
        "model_name": runner.reference or runner.model_id,
        "mode": "completion",
        "in_use": placement.in_flight > 0,
        "loading": runner.state == common_pb2.RUNNER_STATE_STARTING,
    }
    if placement.last_used_ms > 0:
        row["last_used"] = _rfc3339(placement.last_used_ms)
        if placement.expires_ms > 0:
            row["keep_alive"] = go_duration((placement.expires_ms - placement.last_used_ms) / 1000)
    if placement.expires_ms == 0:
        row["keep_alive"] = "-1"
    row.update(
        {
            "worker_id": placement.worker_id,
            "worker_address": placement.worker_address,
            "worker_tags": dict(sorted(placement.worker_tags.items())),
            "model_id": runner.model_id,
            "state": _STATE_NAMES.get(runner.state, "unknown"),
            "in_flight": placement.in_flight,
            "queued": placement.queued,
            "memory_bytes": runner.memory_bytes,
            "parallel": runner.parallel,
            "context_size": runner.context_size,
            "expires_at": _rfc3339(placement.expires_ms) if placement.expires_ms > 0 else None,
        }
    )
    if runner.error:
        row["error"] = runner.error
    return row


def backend_status(workers: Sequence[scheduler_pb2.WorkerStatus]) -> str:
    """DMR's `/engines/status` value: "Running: <details>" or "Error: <details>"."""
    alive = sum(1 for worker in workers if worker.alive)
    if alive:
        return f"Running: {BACKEND_NAME} on {alive} worker{'' if alive == 1 else 's'}"
    if workers:
        return f"Error: no workers alive ({len(workers)} registered, none heartbeating)"
    return "Error: no workers registered"


def worker_status(status: scheduler_pb2.WorkerStatus) -> dict[str, Any]:
    """A `/engines/workers` row; `last_seen` in unix seconds (null if never)."""
    worker = status.worker
    return {
        "worker_id": worker.worker_id,
        "address": worker.address,
        "alive": status.alive,
        "draining": status.draining,
        "tags": dict(sorted(worker.tags.items())),
        "memory_total_bytes": worker.memory_total_bytes,
        "memory_free_bytes": worker.memory_free_bytes,
        "memory_reserved_bytes": status.memory_reserved_bytes,
        "cache_bytes": worker.cache_bytes,
        "runners": status.runners,
        "last_seen": status.last_seen_ms // 1000 if status.last_seen_ms > 0 else None,
    }


def disk_usage(
    usage: registry_pb2.DiskUsageResponse, workers: Sequence[scheduler_pb2.WorkerStatus]
) -> dict[str, Any]:
    """DMR's `/engines/df` (the store; the workers' blob caches as the backend's share), plus
    each worker's cache."""
    return {
        "models_disk_usage": usage.blobs_bytes + usage.incomplete_bytes,
        "default_backend_disk_usage": sum(status.worker.cache_bytes for status in workers),
        "workers": [
            {
                "worker_id": status.worker.worker_id,
                "address": status.worker.address,
                "cache_bytes": status.worker.cache_bytes,
            }
            for status in workers
        ],
    }
