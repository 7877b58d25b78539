"""llama-server's streamed OpenAI chunks -> Anthropic's SSE events (a pure state machine).

Anthropic's sequence: `message_start` (the message with empty content and the prompt's usage),
`ping`, then per content block `content_block_start`, `content_block_delta`s (`text_delta`,
`thinking_delta`, `input_json_delta`) and `content_block_stop`, then `message_delta` (stop
reason and final usage) and `message_stop`. Each event is an `event:` line and a `data:` JSON line.

OpenAI deltas interleave freely; Anthropic blocks do not, so a delta of another kind closes the
open block and starts the next one. A forced tool call (translate.py) streams its JSON as
`input_json_delta`s of one tool_use block as the model writes it; when the model chose among
several tools the name is only known once the JSON is complete, so that answer is held (up to
`max_buffer` bytes) and sent as one delta at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from services.gateway import errors
from services.gateway.anthropic import answers
from services.gateway.anthropic.errors import error_event
from services.gateway.anthropic.translate import Translation

__all__ = ["MessageStream", "sse_event"]


def sse_event(payload: Mapping[str, Any]) -> bytes:
    return (
        b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
    )


class MessageStream:
    """Feed each upstream chunk to `feed`, then call `finish` (or `fail`); each returns the bytes
    to send."""

    def __init__(
        self, translation: Translation, *, model: str, message_id: str, max_buffer: int
    ) -> None:
        self._translation = translation
        self._model = model
        self._id = message_id
        self._max_buffer = max_buffer
        self._started = False
        self._next_index = 0
        # The open block: its kind ("text", "thinking", "tool_use") and the OpenAI tool call
        # index it carries (tool_use blocks of native calls only).
        self._open: str | None = None
        self._open_call: int | None = None
        self._tool_used = False
        self._held = ""
        self._held_bytes = 0
        # What is left to recognise of the prefill llama-server repeats (translate.py), and the
        # text held back while it still matches.
        self._prefill = translation.prefill
        self._echo = ""
        self._finish_reason: object = None
        self._usage: object = None
        self._stopped_at: str | None = None
        self._out: list[bytes] = []

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        if not self._started:
            self._start(chunk.get("prompt_progress"))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        stopped_at = answers.stopping_word(chunk)
        if stopped_at is not None:
            self._stopped_at = stopped_at
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                self._delta(delta)
            if choice.get("finish_reason") is not None:
                self._finish_reason = choice["finish_reason"]
        return self._flush()

    def finish(self) -> bytes:
        """The closing events once llama-server's stream ended."""
        if not self._started:
            self._start(None)
        if self._finish_reason is None:
            return self.fail(errors.UpstreamError("the model's stream ended before it finished"))
        if self._translation.wrapped:
            self._release_held()
        if self._echo:
            # The answer ended inside what looked like the prefill: it was the answer after all.
            echo, self._echo, self._prefill = self._echo, "", ""
            self._ensure_open("text", {"type": "text", "text": ""})
            self._block_delta({"type": "text_delta", "text": echo})
        self._close_block()
        reason, sequence = answers.stop_reason(
            self._finish_reason,
            tool_used=self._tool_used,
            stopped_at=self._stopped_at,
            translation=self._translation,
        )
        final = answers.usage(self._usage)
        self._emit(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": final,
            }
        )
        self._emit({"type": "message_stop"})
        return self._flush()

    def fail(self, err: errors.GatewayError) -> bytes:
        """Anthropic's `error` event, which ends the stream (after what was sent already)."""
        return self._flush() + error_event(err)

    def _emit(self, payload: Mapping[str, Any]) -> None:
        self._out.append(sse_event(payload))

    def _flush(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def _start(self, progress: object) -> None:
        self._started = True
        # The first chunk's `prompt_progress` (requested with return_progress) gives the prompt's
        # size before any token; without it the counts come with message_delta only.
        if isinstance(progress, Mapping):
            total, cached = progress.get("total"), progress.get("cache")
            start_usage = answers.usage(
                {"prompt_tokens": total, "prompt_tokens_details": {"cached_tokens": cached}}
            )
        else:
            start_usage = answers.usage(None)
        self._emit(
            {
                "type": "message_start",
                "message": {
                    "id": self._id,
                    "type": "message",
                    "role": "assistant",
                    "model": self._model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            }
        )
        self._emit({"type": "ping"})

    def _delta(self, delta: Mapping[str, Any]) -> None:
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self._ensure_open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self._block_delta({"type": "thinking_delta", "thinking": reasoning})
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._content(text)
        calls = delta.get("tool_calls")
        if isinstance(calls, list) and not self._translation.forced_tools:
            for call in calls:
                if isinstance(call, Mapping):
                    self._native_call(call)

    def _content(self, text: str) -> None:
        translation = self._translation
        if not translation.forced_tools:
            text = self._without_prefill(text)
            if text:
                self._ensure_open("text", {"type": "text", "text": ""})
                self._block_delta({"type": "text_delta", "text": text})
        elif translation.wrapped:
            self._held_bytes += len(text.encode())
            if self._held_bytes > self._max_buffer:
                raise errors.UpstreamError(
                    f"the tool call is larger than GATEWAY_MAX_RESPONSE_BYTES "
                    f"({self._max_buffer} bytes)"
                )
            self._held += text
        else:
            if self._open != "tool_use":
                self._start_tool(translation.forced_tools[0], None)
            self._block_delta({"type": "input_json_delta", "partial_json": text})

    def _without_prefill(self, text: str) -> str:
        """`text` less the repeated prefill; held back while it may still be part of it."""
        if not self._prefill:
            return text
        self._echo += text
        if len(self._echo) < len(self._prefill) and self._prefill.startswith(self._echo):
            return ""
        echo, prefill = self._echo, self._prefill
        self._echo, self._prefill = "", ""
        return echo.removeprefix(prefill)

    def _native_call(self, call: Mapping[str, Any]) -> None:
        index = call.get("index", 0)
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        if self._open != "tool_use" or self._open_call != index:
            name = function.get("name")
            call_id = call.get("id")
            self._start_tool(
                name if isinstance(name, str) else "",
                call_id if isinstance(call_id, str) and call_id else None,
            )
            self._open_call = index if isinstance(index, int) else None
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._block_delta({"type": "input_json_delta", "partial_json": arguments})

    def _release_held(self) -> None:
        call = answers.forced_call(self._held, self._translation)
        if call is not None:
            self._start_tool(call.name, None)
            self._block_delta(
                {"type": "input_json_delta", "partial_json": orjson.dumps(call.input).decode()}
            )
        elif self._held:
            self._ensure_open("text", {"type": "text", "text": ""})
            self._block_delta({"type": "text_delta", "text": self._held})
        self._held, self._held_bytes = "", 0

    def _start_tool(self, name: str, call_id: str | None) -> None:
        self._close_block()
        self._tool_used = True
        block = {"type": "tool_use", "id": call_id or answers.tool_use_id(), "name": name}
        self._open_block("tool_use", {**block, "input": {}})

    def _ensure_open(self, kind: str, block: dict[str, Any]) -> None:
        if self._open != kind:
            self._close_block()
            self._open_block(kind, block)

    def _open_block(self, kind: str, block: dict[str, Any]) -> None:
        self._open = kind
        self._open_call = None
        self._emit(
            {"type": "content_block_start", "index": self._next_index, "content_block": block}
        )

    def _block_delta(self, delta: dict[str, Any]) -> None:
        self._emit({"type": "content_block_delta", "index": self._next_index, "delta": delta})

    def _close_block(self) -> None:
        if self._open is None:
            return
        self._emit({"type": "content_block_stop", "index": self._next_index})
        self._open = None
        self._open_call = None
        self._next_index += 1
