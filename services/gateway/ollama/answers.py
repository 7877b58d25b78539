"""llama-server's OpenAI answers -> Ollama's answer objects (pure: clock readings come in).

A stream becomes one object per piece of text: `message.content` (chat) or `response`
(generate), with `reasoning_content` as `thinking`. Tool calls are not passed on as they arrive:
llama-server streams a call's arguments in fragments, OpenAI-style, while Ollama's clients expect
each call whole with `arguments` an object (the Python client validates a mapping, and Open WebUI
breaks on fragments: open-webui#26880). Fragments are joined by their index and the calls go out
together, parsed, in one message once the model has finished; arguments that are not a JSON
object (a call cut off by num_predict, say) are an error rather than a call the client cannot use.

The last object (`done: true`) carries `done_reason` and the statistics, in nanoseconds:

    prompt_eval_count     usage.prompt_tokens: the whole prompt, cached tokens included
    prompt_eval_duration  timings.prompt_ms: llama-server's time on the prompt's uncached part
    eval_count            usage.completion_tokens
    eval_duration         timings.predicted_ms
    total_duration        the gateway's wall time for the request, body read to last object
    load_duration         total_duration less the two durations above: queueing, routing and,
                          on a cold start, loading the model (no hop reports the load itself)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.gateway import errors

__all__ = [
    "Shape",
    "StreamTranslator",
    "ToolCalls",
    "complete_answer",
    "done_reason",
    "ollama_logprobs",
    "statistics",
    "status_answer",
]

_NANOS_PER_MS = 1_000_000


class Shape(enum.Enum):
    """Which Ollama answer: /api/chat's `message` or /api/generate's `response`."""

    CHAT = "chat"
    GENERATE = "generate"


def done_reason(finish_reason: object) -> str:
    """Ollama's reasons are "stop" and "length"; a tool call ends with "stop" there too."""
    if finish_reason == "length":
        return "length"
    if finish_reason in (None, "stop", "tool_calls", "function_call"):
        return "stop"
    return str(finish_reason)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _nanos(milliseconds: object) -> int:
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, int | float):
        return 0
    if not math.isfinite(milliseconds) or milliseconds <= 0:
        return 0
    return round(milliseconds * _NANOS_PER_MS)


def statistics(
    usage: Mapping[str, Any] | None, timings: Mapping[str, Any] | None, total_ns: int
) -> dict[str, int]:
    usage = usage or {}
    timings = timings or {}
    prompt_ns = _nanos(timings.get("prompt_ms", 0))
    eval_ns = _nanos(timings.get("predicted_ms", 0))
    prompt_tokens = _int(usage.get("prompt_tokens")) or (
        _int(timings.get("prompt_n")) + _int(timings.get("cache_n"))
    )
    eval_tokens = _int(usage.get("completion_tokens")) or _int(timings.get("predicted_n"))
    return {
        "total_duration": total_ns,
        "load_duration": max(total_ns - prompt_ns - eval_ns, 0),
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": eval_tokens,
        "eval_duration": eval_ns,
    }


def ollama_logprobs(logprobs: object) -> list[dict[str, Any]]:
    """OpenAI's `choice.logprobs.content` -> Ollama's `logprobs` list."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return []
    entries: list[dict[str, Any]] = []
    for item in content:
        if not isinstance(item, dict):
            continue
        entry: dict[str, Any] = {"token": item.get("token", ""), "logprob": item.get("logprob")}
        if isinstance(item.get("bytes"), list):
            entry["bytes"] = item["bytes"]
        top = item.get("top_logprobs")
        if isinstance(top, list):
            entry["top_logprobs"] = [
                {"token": alt.get("token", ""), "logprob": alt.get("logprob")}
                for alt in top
                if isinstance(alt, dict)
            ]
        entries.append(entry)
    return entries


def _arguments(name: str, text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise errors.UpstreamError(
            f"the model's call of tool {name!r} has arguments that are not a JSON object: "
            f"{text[:200]!r}"
        )
    return parsed


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCalls:
    """OpenAI tool-call deltas joined by index into whole calls in Ollama's shape."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, deltas: object) -> None:
        if not isinstance(deltas, list):
            return
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            position = index if isinstance(index, int) else len(self._calls)
            call = self._calls.setdefault(position, _PartialCall())
            if isinstance(delta.get("id"), str) and delta["id"]:
                call.id = delta["id"]
            function = delta.get("function")
            if not isinstance(function, dict):
                continue
            if isinstance(function.get("name"), str) and function["name"]:
                call.name = function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.arguments.append(arguments)
            elif isinstance(arguments, dict):
                # Already whole (some servers send an object); keep it as its JSON text.
                call.arguments = [orjson.dumps(arguments).decode()]

    def complete(self) -> list[dict[str, Any]]:
        """The calls in index order; raises UpstreamError for arguments that do not parse."""
        calls = []
        for number, (_, call) in enumerate(sorted(self._calls.items())):
            entry: dict[str, Any] = {
                "function": {
                    "index": number,
                    "name": call.name,
                    "arguments": _arguments(call.name, "".join(call.arguments)),
                }
            }
            if call.id:
                entry["id"] = call.id
            calls.append(entry)
        return calls


def _first_choice(answer: Mapping[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _piece(
    model: str,
    shape: Shape,
    created_at: str,
    *,
    content: str = "",
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
    done: bool = False,
) -> dict[str, Any]:
    answer: dict[str, Any] = {"model": model, "created_at": created_at}
    if shape is Shape.CHAT:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        answer["message"] = message
    else:
        answer["response"] = content
        if thinking:
            answer["thinking"] = thinking
    answer["done"] = done
    return answer


def status_answer(model: str, shape: Shape, created_at: str, reason: str) -> dict[str, Any]:
    """The answer to a request that only loads or unloads the model (`done_reason` "load" or
    "unload"), as Ollama gives it."""
    answer = _piece(model, shape, created_at, done=True)
    answer["done_reason"] = reason
    return answer


class StreamTranslator:
    """Feeds on llama-server's stream events, gives Ollama's objects (one NDJSON line each).

    `chat_events`: the events are chat.completion.chunk (delta) rather than text_completion.
    """

    def __init__(
        self, *, model: str, shape: Shape, chat_events: bool, now: Callable[[], str]
    ) -> None:
        self._model = model
        self._shape = shape
        self._chat_events = chat_events
        self._now = now
        self._tools = ToolCalls()
        self._finish: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._timings: Mapping[str, Any] | None = None

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self._timings = event["timings"]
        choice = _first_choice(event)
        if not choice:
            return []
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        if self._chat_events:
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            content = _text(delta.get("content"))
            thinking = _text(delta.get("reasoning_content"))
            self._tools.add(delta.get("tool_calls"))
        else:
            content, thinking = _text(choice.get("text")), ""
        logprobs = ollama_logprobs(choice.get("logprobs"))
        if not (content or thinking or logprobs):
            return []
        piece = _piece(self._model, self._shape, self._now(), content=content, thinking=thinking)
        if logprobs:
            piece["logprobs"] = logprobs
        return [piece]

    def finish(self, total_ns: int) -> list[dict[str, Any]]:
        """The tool calls (if any) and the final object; raises UpstreamError when llama-server's
        stream ended before the model finished."""
        if self._finish is None:
            raise errors.UpstreamError("llama-server's answer ended before it was complete")
        objects = []
        if self._tools:
            calls = self._tools.complete()
            objects.append(_piece(self._model, self._shape, self._now(), tool_calls=calls))
        final = _piece(self._model, self._shape, self._now(), done=True)
        final["done_reason"] = done_reason(self._finish)
        final.update(statistics(self._usage, self._timings, total_ns))
        objects.append(final)
        return objects


def complete_answer(
    answer: Mapping[str, Any],
    *,
    model: str,
    shape: Shape,
    chat_events: bool,
    created_at: str,
    total_ns: int,
) -> dict[str, Any]:
    """A non-streamed llama-server answer as Ollama's one `done: true` object."""
    choice = _first_choice(answer)
    if chat_events:
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        content = _text(message.get("content"))
        thinking = _text(message.get("reasoning_content"))
        tools = ToolCalls()
        tools.add(message.get("tool_calls"))
        calls = tools.complete() if tools else None
    else:
        content, thinking, calls = _text(choice.get("text")), "", None
    result = _piece(
        model,
        shape,
        created_at,
        content=content,
        thinking=thinking,
        tool_calls=calls,
        done=True,
    )
    result["done_reason"] = done_reason(choice.get("finish_reason"))
    logprobs = ollama_logprobs(choice.get("logprobs"))
    if logprobs:
        result["logprobs"] = logprobs
    usage = answer.get("usage")
    timings = answer.get("timings")
    result.update(
        statistics(
            usage if isinstance(usage, dict) else None,
            timings if isinstance(timings, dict) else None,
            total_ns,
        )
    )
    return result
