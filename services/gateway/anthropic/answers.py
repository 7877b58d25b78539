"""llama-server's OpenAI chat answer -> an Anthropic Message (pure functions), plus the pieces
the streamed translation shares: ids, usage, stop reasons and reading a forced tool call.

Usage follows Anthropic's split: `input_tokens` are the prompt tokens llama-server evaluated,
`cache_read_input_tokens` those it reused from its prompt cache; their sum is the whole prompt,
which is what `count_tokens` reports for the same request.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from services.gateway import errors
from services.gateway.anthropic.translate import Translation

__all__ = [
    "ForcedCall",
    "forced_call",
    "message_id",
    "stop_reason",
    "stopping_word",
    "to_message",
    "tool_use_id",
    "usage",
]


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex}"


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def usage(openai_usage: object) -> dict[str, int]:
    """Anthropic's usage object from OpenAI's (absent or malformed counts are 0)."""
    source = openai_usage if isinstance(openai_usage, Mapping) else {}
    prompt = _count(source.get("prompt_tokens"))
    details = source.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    cached = min(cached, prompt)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": _count(source.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def stopping_word(payload: Mapping[str, Any]) -> str | None:
    """The stop string llama-server stopped at, from its `__verbose` extension (translate.py)."""
    verbose = payload.get("__verbose")
    if not isinstance(verbose, Mapping) or verbose.get("stop_type") != "word":
        return None
    word = verbose.get("stopping_word")
    return word if isinstance(word, str) else None


def stop_reason(
    finish_reason: object, *, tool_used: bool, stopped_at: str | None, translation: Translation
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI finish_reason."""
    if finish_reason == "length":
        return "max_tokens", None
    if tool_used or finish_reason == "tool_calls":
        return "tool_use", None
    # llama-server also stops at the template's own end-of-turn strings; only the client's count.
    if stopped_at is not None and stopped_at in translation.stop_sequences:
        return "stop_sequence", stopped_at
    return "end_turn", None


@dataclass(frozen=True, slots=True)
class ForcedCall:
    name: str
    input: dict[str, Any]


def forced_call(text: str, translation: Translation) -> ForcedCall | None:
    """The call a forced answer spells out, or None when the text is not one (cut short by
    max_tokens, for instance)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    if not translation.wrapped:
        return ForcedCall(translation.forced_tools[0], value)
    name, arguments = value.get("name"), value.get("input")
    if name in translation.forced_tools and isinstance(arguments, dict):
        return ForcedCall(str(name), arguments)
    return None


def _tool_use(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def _native_calls(calls: object) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise errors.UpstreamError("llama-server answered with a malformed tool call")
        raw = function.get("arguments") or "{}"
        try:
            arguments = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError:
            raise errors.UpstreamError(
                f"llama-server answered with tool call arguments that are not JSON: {raw[:200]}"
            ) from None
        if not isinstance(arguments, dict):
            raise errors.UpstreamError(
                "llama-server answered with tool call arguments that are not an object"
            )
        call_id = call.get("id") if isinstance(call, Mapping) else None
        blocks.append(
            _tool_use(
                call_id if isinstance(call_id, str) and call_id else tool_use_id(),
                function["name"],
                arguments,
            )
        )
    return blocks


def to_message(
    completion: Mapping[str, Any], translation: Translation, *, model: str, message_id: str
) -> dict[str, Any]:
    """The Message for a non-streamed chat completion."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise errors.UpstreamError("llama-server answered without a choice")
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    text = text if isinstance(text, str) else ""
    tool_used = False
    if translation.forced_tools:
        call = forced_call(text, translation)
        if call is not None:
            content.append(_tool_use(tool_use_id(), call.name, call.input))
            tool_used = True
        elif text:
            content.append({"type": "text", "text": text})
    else:
        text = text.removeprefix(translation.prefill)
        if text:
            content.append({"type": "text", "text": text})
        calls = _native_calls(message.get("tool_calls"))
        content.extend(calls)
        tool_used = bool(calls)
    reason, sequence = stop_reason(
        choice.get("finish_reason"),
        tool_used=tool_used,
        stopped_at=stopping_word(completion),
        translation=translation,
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(completion.get("usage")),
    }
