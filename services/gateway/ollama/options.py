"""Ollama's per-request knobs -> llama-server's OpenAI request fields (pure functions).

`options` (Ollama's Modelfile parameters):

    temperature, top_p, top_k, min_p, typical_p,     the same names: OpenAI's fields or the
    seed, stop, presence_penalty, frequency_penalty, sampling fields llama-server reads
    repeat_penalty, repeat_last_n,                   from an OpenAI body
    mirostat, mirostat_tau, mirostat_eta
    num_predict                                      max_tokens; a negative value (Ollama: -1
                                                     unlimited, -2 fill the context) sets none,
                                                     so generation ends at the context's end
    num_keep                                         n_keep

    num_ctx and the other load-time options (num_batch, num_gpu, main_gpu, num_thread, use_mmap,
    use_mlock, low_vram, f16_kv, numa, ...) are NOT applied per request. One llama-server process
    serves every request for a model and its context is fixed when it starts; Ollama reloads the
    model when num_ctx changes, which here would evict a runner other requests are using. The
    context comes from the model's configuration instead (`docker model configure
    --context-size`, `POST /engines/_configure`), and a prompt that does not fit is llama-server's
    400, passed on. tfs_z and penalize_newline are samplers llama.cpp removed. All of these, and
    unknown keys, are ignored, as Ollama ignores options it does not know; a known option with a
    value of the wrong type is a 400 naming it.

`format`: "json" -> response_format json_object; a JSON schema object -> response_format
json_schema; "" -> none. Raw completions (/v1/completions ignores response_format) get
llama-server's own `json_schema` field instead.

`keep_alive`: seconds (a number) or a duration string ("5m", "1h30m", "0", "-1"); negative means
never unload. It becomes RoutingHints.keep_alive for the scheduler.

`think`: true/false -> the chat template's `enable_thinking`; "high"/"medium"/"low" -> thinking on
with that `reasoning_effort`. llama-server returns the reasoning apart (`reasoning_content`),
which becomes Ollama's `thinking`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from services.common.env import parse_duration
from services.gateway import errors

__all__ = [
    "IGNORED_OPTIONS",
    "chat_response_format",
    "completion_json_schema",
    "keep_alive_seconds",
    "logprob_fields",
    "sampling_fields",
    "thinking_fields",
]

_FLOAT_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "mirostat_tau",
        "mirostat_eta",
    }
)
# Ollama's name -> llama-server's.
_INT_OPTIONS = {
    "top_k": "top_k",
    "seed": "seed",
    "repeat_last_n": "repeat_last_n",
    "mirostat": "mirostat",
    "num_keep": "n_keep",
}
IGNORED_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "embedding_only",
        "tfs_z",
        "penalize_newline",
    }
)
_EFFORTS = frozenset({"high", "medium", "low"})
# The JSON-mode grammar for raw completions: any JSON object, as Ollama's "json" format.
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _number(value: object) -> float | None:
    """A JSON number as a float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _float(name: str, value: object) -> float:
    number = _number(value)
    if number is None or not math.isfinite(number):
        raise errors.InvalidRequest(f"option {name} must be a number", param=f"options.{name}")
    return number


def _int(name: str, value: object) -> int:
    number = _number(value)
    if number is None or not number.is_integer():
        raise errors.InvalidRequest(f"option {name} must be an integer", param=f"options.{name}")
    return int(number)


def _stop(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise errors.InvalidRequest(
        "option stop must be a string or a list of strings", param="options.stop"
    )


def sampling_fields(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The OpenAI/llama-server fields for Ollama's `options`."""
    fields: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if value is None:
            continue
        if name in _FLOAT_OPTIONS:
            fields[name] = _float(name, value)
        elif name in _INT_OPTIONS:
            fields[_INT_OPTIONS[name]] = _int(name, value)
        elif name == "num_predict":
            limit = _int(name, value)
            if limit >= 0:
                fields["max_tokens"] = limit
        elif name == "stop":
            fields["stop"] = _stop(value)
    return fields


def _check_format(value: object) -> None:
    if value in (None, "", "json") or isinstance(value, dict):
        return
    raise errors.InvalidRequest(
        f'invalid format {str(value)[:64]!r}: use "json" or a JSON schema object', param="format"
    )


def chat_response_format(value: object) -> dict[str, Any] | None:
    """OpenAI's `response_format` for Ollama's `format`; None when there is none."""
    _check_format(value)
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    return None


def completion_json_schema(value: object) -> dict[str, Any] | None:
    """llama-server's `json_schema` for a raw completion's `format`; None when there is none."""
    _check_format(value)
    if value == "json":
        return dict(_ANY_OBJECT)
    if isinstance(value, dict):
        return value
    return None


def keep_alive_seconds(value: object) -> float | None:
    """Seconds the model stays loaded after the request (-1: never unload); None: not given."""
    if value is None:
        return None
    number = _number(value)
    if number is not None:
        seconds = number
    elif isinstance(value, str):
        if not value.strip():
            return None
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = math.nan
    else:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise errors.InvalidRequest(
            f"invalid keep_alive {str(value)[:64]!r}: use seconds or a duration such as "
            '"5m", 0 to unload, -1 to keep loaded',
            param="keep_alive",
        )
    return -1.0 if seconds < 0 else seconds


def thinking_fields(think: bool | str | None) -> dict[str, Any]:
    if think is None:
        return {}
    if isinstance(think, bool):
        return {"chat_template_kwargs": {"enable_thinking": think}}
    if think in _EFFORTS:
        return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": think}
    raise errors.InvalidRequest(
        f'invalid think value {think[:64]!r}: use true, false, "high", "medium" or "low"',
        param="think",
    )


def logprob_fields(logprobs: bool, top_logprobs: int | None) -> dict[str, Any]:
    if not logprobs:
        return {}
    fields: dict[str, Any] = {"logprobs": True}
    if top_logprobs:
        fields["top_logprobs"] = top_logprobs
    return fields
