"""Protos -> the JSON DMR clients expect: `/models`, OpenAI model lists and `/engines/ps` rows."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from modelrunner.v1 import common_pb2, scheduler_pb2

__all__ = [
    "BACKEND_NAME",
    "dmr_model",
    "go_duration",
    "openai_model",
    "openai_model_list",
    "placement_status",
]

BACKEND_NAME = "llama.cpp"

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
    """Go's time.Duration text ("5m0s", "1h0m0s", "30s"), which DMR's keep_alive uses."""
    total = round(seconds)
    if total <= 0:
        return "0s"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def placement_status(placement: scheduler_pb2.Placement) -> dict[str, Any]:
    """A `/engines/ps` row: DMR's BackendStatus fields, then where and how the runner lives."""
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
            "model_id": runner.model_id,
            "state": _STATE_NAMES.get(runner.state, "unknown"),
            "in_flight": placement.in_flight,
            "expires_at": _rfc3339(placement.expires_ms) if placement.expires_ms > 0 else None,
        }
    )
    if runner.error:
        row["error"] = runner.error
    return row
