"""The gateway's wire formats, parsed: DMR's NDJSON progress lines, OpenAI's SSE chat chunks and
error bodies. Pure functions, no I/O."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ChatChunk",
    "LayerProgress",
    "TransferEvent",
    "error_from_body",
    "iter_sse_data",
    "parse_chat_chunk",
    "parse_transfer_line",
]

# Enough of a non-JSON error page to say what it was, not a whole HTML document.
_MAX_TEXT_ERROR_CHARS = 300
_DONE = "[DONE]"


@dataclass(frozen=True)
class LayerProgress:
    id: str
    size: int
    current: int

    @property
    def short_id(self) -> str:
        """`sha256:0123456789ab...` -> `0123456789ab`, as docker shows layers."""
        return self.id.partition(":")[2][:12] or self.id[:12]

    @property
    def done(self) -> bool:
        return self.size > 0 and self.current >= self.size


@dataclass(frozen=True)
class TransferEvent:
    """One line of DMR's pull/push stream: `{type, message, total, layer, mode}`."""

    type: str
    message: str
    mode: str = ""
    total: int = 0
    layer: LayerProgress | None = None


def _int(value: object) -> int:
    """A byte count from JSON; anything else (missing, negative, text) counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return max(int(value), 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def parse_transfer_line(line: str) -> TransferEvent | None:
    """None for a blank line; ValueError for a line that is not a progress object."""
    text = line.strip()
    if not text:
        return None
    # DMR answers text/plain with HTML-escaped JSON unless asked for JSON; undo it either way.
    if text.startswith("{&#34;"):
        text = text.replace("&#34;", '"').replace("&amp;", "&").replace("&lt;", "<")
    data = json.loads(text)
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"not a progress line: {text[:80]!r}")
    layer = data.get("layer")
    parsed_layer = None
    if isinstance(layer, dict) and layer.get("id"):
        parsed_layer = LayerProgress(
            id=str(layer["id"]), size=_int(layer.get("size")), current=_int(layer.get("current"))
        )
    return TransferEvent(
        type=str(data["type"]),
        message=str(data.get("message") or ""),
        mode=str(data.get("mode") or ""),
        total=_int(data.get("total")),
        layer=parsed_layer,
    )


@dataclass(frozen=True)
class ChatChunk:
    """What one streamed chat/completions event carries that the CLI uses."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    # llama-server's own `timings` (prompt_ms, predicted_n, predicted_per_second, ...).
    timings: dict[str, float] | None = None
    error: str | None = None


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The `data` of each server-sent event, until `[DONE]` or the end of the stream."""
    pending: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if pending:
                data = "\n".join(pending)
                pending = []
                if data == _DONE:
                    return
                yield data
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            pending.append(value.removeprefix(" "))
    if pending:
        data = "\n".join(pending)
        if data != _DONE:
            yield data


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or json.dumps(error))
    return str(error)


def parse_chat_chunk(data: str) -> ChatChunk:
    """One SSE `data` payload of chat/completions or completions (ValueError if not JSON)."""
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ValueError("stream event is not a JSON object")
    if "error" in body:
        return ChatChunk(error=_error_text(body["error"]))
    content = reasoning = ""
    finish: str | None = None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = str(delta.get("content") or "")
            reasoning = str(delta.get("reasoning_content") or "")
        elif "text" in choice:
            content = str(choice.get("text") or "")
        finish = choice.get("finish_reason") or None
    usage = body.get("usage")
    completion_tokens = prompt_tokens = None
    if isinstance(usage, dict):
        completion_tokens = _optional_int(usage.get("completion_tokens"))
        prompt_tokens = _optional_int(usage.get("prompt_tokens"))
    timings = body.get("timings")
    return ChatChunk(
        content=content,
        reasoning=reasoning,
        finish_reason=finish,
        completion_tokens=completion_tokens,
        prompt_tokens=prompt_tokens,
        timings=_numbers(timings) if isinstance(timings, dict) else None,
    )


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _numbers(mapping: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in mapping.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def error_from_body(status: int, body: bytes) -> tuple[str, str]:
    """(message, type) of an error answer: OpenAI's shape, FastAPI's `detail`, or the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"]), str(error.get("type") or "")
        if isinstance(error, str) and error:
            return error, ""
        for key in ("detail", "message"):
            if data.get(key):
                return str(data[key]), ""
    if text:
        return text[:_MAX_TEXT_ERROR_CHARS], ""
    return f"HTTP {status}", ""
