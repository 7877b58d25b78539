"""DMR's `/engines/_configure` JSON <-> the scheduler's ModelRuntimeConfig.

POST body: DMR's ConfigureRequest keys plus this project's extensions.

    model               required; as the client writes it (the scheduler resolves it)
    mode                "completion" or "embedding": one runner serves both here, so either
                        configures it; DMR's other modes are refused
    context-size        int; -1 (DMR: "unlimited") and 0 mean the default
    runtime-flags       [string]: llama-server arguments, checked against the scheduler's allowlist
    raw-runtime-flags   the same as one string, split like a shell would; only one of the two
    keep_alive          Go duration ("5m", "0" unload after use, "-1" never) or seconds
    required-tags       {"key": "value"}: a worker must carry all of them to load the model
    min-replicas, max-replicas, parallel    ints >= 0 (0: the scheduler's default)

DMR's `speculative`, `vllm` and `llamacpp` objects are refused (400) rather than ignored, and so
is every other key: a typo must not pass as "configured". GET entries are DMR's ModelConfigEntry
(`Backend`, `Model`, `ModelID`, `Mode`, `Config`), Config in the POST keys, each left out when
unset, as Go's omitempty writes them.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any

from modelrunner.v1 import common_pb2, scheduler_pb2
from services.common.env import parse_duration
from services.gateway import errors
from services.gateway.models_view import BACKEND_NAME, keep_alive_text

__all__ = ["config_entry", "configure_request"]

_INT32_MAX = 2**31 - 1
_KEYS = frozenset(
    {
        "model",
        "mode",
        "context-size",
        "runtime-flags",
        "raw-runtime-flags",
        "keep_alive",
        "required-tags",
        "min-replicas",
        "max-replicas",
        "parallel",
    }
)
# DMR keys for features this gateway does not have.
_UNSUPPORTED_KEYS = frozenset({"speculative", "vllm", "llamacpp"})
_MODES = frozenset({"completion", "embedding"})
_MODE = "completion"


def configure_request(payload: object) -> scheduler_pb2.ConfigureModelRequest:
    """The ConfigureModel call for a POST body; raises errors.InvalidRequest naming the key."""
    if not isinstance(payload, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    _check_keys(payload)
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise errors.InvalidRequest("model is required", param="model")
    mode = payload.get("mode")
    # The type first: an object or a list is unhashable, and `in` a frozenset would raise.
    if mode is not None and (not isinstance(mode, str) or mode not in _MODES):
        raise errors.InvalidRequest(
            f"mode must be completion or embedding, got {mode!r}", param="mode"
        )
    config = common_pb2.ModelRuntimeConfig(
        # DMR's -1 ("unlimited") is llama-server's default too: the packaged context size.
        context_size=max(_integer(payload, "context-size", minimum=-1), 0),
        llama_args=_flags(payload),
        required_tags=_tags(payload),
        min_replicas=_integer(payload, "min-replicas", minimum=0),
        max_replicas=_integer(payload, "max-replicas", minimum=0),
        parallel=_integer(payload, "parallel", minimum=0),
    )
    keep_alive = _keep_alive(payload.get("keep_alive"))
    if keep_alive is not None:
        config.keep_alive_seconds = keep_alive
    if config.max_replicas and config.max_replicas < config.min_replicas:
        raise errors.InvalidRequest(
            f"max-replicas ({config.max_replicas}) is below min-replicas ({config.min_replicas})",
            param="max-replicas",
        )
    return scheduler_pb2.ConfigureModelRequest(model=model.strip(), config=config)


def config_entry(entry: scheduler_pb2.ModelConfigEntry) -> dict[str, Any]:
    """One element of `GET /engines/_configure` (and the answer to a POST)."""
    return {
        "Backend": BACKEND_NAME,
        "Model": entry.reference,
        "ModelID": entry.model_id,
        "Mode": _MODE,
        "Config": _config_json(entry.config),
    }


def _config_json(config: common_pb2.ModelRuntimeConfig) -> dict[str, Any]:
    rendered: dict[str, Any] = {}
    if config.context_size > 0:
        rendered["context-size"] = config.context_size
    if config.llama_args:
        rendered["runtime-flags"] = list(config.llama_args)
    if config.HasField("keep_alive_seconds"):
        rendered["keep_alive"] = keep_alive_text(config.keep_alive_seconds)
    if config.required_tags:
        rendered["required-tags"] = dict(sorted(config.required_tags.items()))
    if config.min_replicas > 0:
        rendered["min-replicas"] = config.min_replicas
    if config.max_replicas > 0:
        rendered["max-replicas"] = config.max_replicas
    if config.parallel > 0:
        rendered["parallel"] = config.parallel
    return rendered


def _check_keys(payload: Mapping[str, object]) -> None:
    unsupported = sorted(
        key for key in _UNSUPPORTED_KEYS if key in payload and payload[key] is not None
    )
    if unsupported:
        raise errors.InvalidRequest(
            f"not supported by this gateway: {', '.join(unsupported)}", param=unsupported[0]
        )
    unknown = sorted(key for key in payload if key not in _KEYS and key not in _UNSUPPORTED_KEYS)
    if unknown:
        raise errors.InvalidRequest(
            f"unknown keys: {', '.join(unknown)}; expected {', '.join(sorted(_KEYS))}",
            param=unknown[0],
        )


def _integer(payload: Mapping[str, object], key: str, *, minimum: int) -> int:
    value = payload.get(key)
    if value is None:
        return 0
    # JSON true is a Python int; it is not a size.
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidRequest(f"{key} must be an integer, got {value!r}", param=key)
    if not minimum <= value <= _INT32_MAX:
        raise errors.InvalidRequest(
            f"{key} must be between {minimum} and {_INT32_MAX}, got {value}", param=key
        )
    return value


def _flags(payload: Mapping[str, object]) -> list[str]:
    flags = payload.get("runtime-flags")
    raw = payload.get("raw-runtime-flags")
    if flags is not None and (
        not isinstance(flags, list) or not all(isinstance(flag, str) for flag in flags)
    ):
        raise errors.InvalidRequest(
            "runtime-flags must be a list of strings", param="runtime-flags"
        )
    if raw is None or raw == "":
        return list(flags or [])
    if not isinstance(raw, str):
        raise errors.InvalidRequest("raw-runtime-flags must be a string", param="raw-runtime-flags")
    if flags:
        raise errors.InvalidRequest(
            "give runtime-flags or raw-runtime-flags, not both", param="raw-runtime-flags"
        )
    try:
        return shlex.split(raw)
    except ValueError as exc:
        raise errors.InvalidRequest(
            f"raw-runtime-flags cannot be split: {exc}", param="raw-runtime-flags"
        ) from None


def _tags(payload: Mapping[str, object]) -> dict[str, str]:
    tags = payload.get("required-tags")
    if tags is None:
        return {}
    if not isinstance(tags, dict) or not all(
        isinstance(value, str) and value for value in tags.values()
    ):
        raise errors.InvalidRequest(
            'required-tags must be an object of non-empty strings, e.g. {"gpu": "h100"}',
            param="required-tags",
        )
    if "" in tags:
        raise errors.InvalidRequest("required-tags: empty tag name", param="required-tags")
    return dict(tags)


def _keep_alive(value: object) -> float | None:
    """Seconds; -1 for never (DMR: any negative duration), None when not given."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise errors.InvalidRequest(
            'keep_alive must be a duration like "5m", "0" or "-1", or a number of seconds',
            param="keep_alive",
        )
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise errors.InvalidRequest(f"keep_alive: {exc}", param="keep_alive") from None
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise errors.InvalidRequest("keep_alive must be finite", param="keep_alive")
    return -1.0 if seconds < 0 else seconds
