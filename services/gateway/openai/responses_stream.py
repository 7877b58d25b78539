"""llama-server's chat.completion.chunk stream -> the Responses API's event stream (no I/O).

The sequence a client sees, each event with `type` and a `sequence_number` counting from 0:

    response.created, response.in_progress
    per text item:  response.output_item.added, response.content_part.added,
                    response.output_text.delta ..., response.output_text.done,
                    response.content_part.done, response.output_item.done
    per tool call:  response.output_item.added, response.function_call_arguments.delta ...,
                    response.function_call_arguments.done, response.output_item.done
    response.completed (or response.incomplete when the token limit cut the answer)

and on a failure after the start: `error`, then `response.failed` with what was produced so far.
A text item closes when the first tool call starts (the model writes text before its calls); tool
call items stay open until the end, because llama-server continues a call by its `index`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.gateway.openai.responses_request import new_id
from services.gateway.openai.responses_translate import (
    failed_response,
    finished_response,
    function_call_item,
    message_item,
    usage_from_chat,
)

__all__ = ["ResponseEvents"]

Event = dict[str, Any]


@dataclass
class _Text:
    item_id: str
    output_index: int
    text: str = ""


@dataclass
class _Call:
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str = ""


class ResponseEvents:
    """Feed it chunks in order; it answers with the events to send, and knows the final Response.

    `response` is the Response object before generation (responses_translate.new_response).
    """

    def __init__(self, response: Mapping[str, Any]) -> None:
        self._response = dict(response)
        self._sequence = 0
        # Output items in output_index order: open ones are _Text/_Call, closed ones are dicts.
        self._items: list[_Text | _Call | dict[str, Any]] = []
        self._text: _Text | None = None
        self._calls: dict[int, _Call] = {}
        self._usage: dict[str, Any] | None = None
        self._finish_reason: object = None
        self._final: dict[str, Any] | None = None

    @property
    def final_response(self) -> dict[str, Any] | None:
        """The completed, incomplete or failed Response, once `finish` or `fail` ran."""
        return self._final

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        snapshot = {**self._response, "output": []}
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        usage = usage_from_chat(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            # n > 1 has no Responses form; only the first choice is the answer.
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    events += self._text_delta(content)
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, Mapping):
                        events += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def _text_delta(self, content: str) -> list[Event]:
        events: list[Event] = []
        text = self._text
        if text is None:
            text = self._text = _Text(new_id("msg"), len(self._items))
            self._items.append(text)
            item = message_item(text.item_id, "", "in_progress")
            item["content"] = []
            events.append(
                self._event("response.output_item.added", output_index=text.output_index, item=item)
            )
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=text.item_id,
                    output_index=text.output_index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        text.text += content
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=text.item_id,
                output_index=text.output_index,
                content_index=0,
                delta=content,
                logprobs=[],
            )
        )
        return events

    def _call_delta(self, delta: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        index = delta.get("index", 0)
        function = delta.get("function")
        function = function if isinstance(function, Mapping) else {}
        call = self._calls.get(index) if isinstance(index, int) else None
        if call is None:
            events += self._close_text()
            call = _Call(
                item_id=new_id("fc"),
                output_index=len(self._items),
                call_id=str(delta.get("id") or new_id("call")),
                name=str(function.get("name") or ""),
            )
            self._calls[index if isinstance(index, int) else len(self._calls)] = call
            self._items.append(call)
            item = function_call_item(call.item_id, call.call_id, call.name, "", "in_progress")
            events.append(
                self._event("response.output_item.added", output_index=call.output_index, item=item)
            )
        elif not call.name and function.get("name"):
            call.name = str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    delta=arguments,
                )
            )
        return events

    def _status(self) -> str:
        return "incomplete" if self._finish_reason == "length" else "completed"

    def _close_text(self) -> list[Event]:
        text, self._text = self._text, None
        if text is None:
            return []
        part = {"type": "output_text", "text": text.text, "annotations": [], "logprobs": []}
        item = message_item(text.item_id, text.text, self._status())
        self._items[text.output_index] = item
        where = {"item_id": text.item_id, "output_index": text.output_index, "content_index": 0}
        return [
            self._event("response.output_text.done", **where, text=text.text, logprobs=[]),
            self._event("response.content_part.done", **where, part=part),
            self._event("response.output_item.done", output_index=text.output_index, item=item),
        ]

    def _close_call(self, call: _Call) -> list[Event]:
        item = function_call_item(
            call.item_id, call.call_id, call.name, call.arguments, self._status()
        )
        self._items[call.output_index] = item
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=call.item_id,
                output_index=call.output_index,
                name=call.name,
                arguments=call.arguments,
            ),
            self._event("response.output_item.done", output_index=call.output_index, item=item),
        ]

    def finish(self) -> list[Event]:
        """Close every open item and end with response.completed or response.incomplete."""
        events = self._close_text()
        for call in sorted(self._calls.values(), key=lambda open_call: open_call.output_index):
            events += self._close_call(call)
        self._calls.clear()
        output = [item for item in self._items if isinstance(item, dict)]
        final = finished_response(self._response, output, self._usage, self._finish_reason)
        self._final = final
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        events.append(self._event(kind, response=final))
        return events

    def fail(self, message: str) -> list[Event]:
        """`error`, then response.failed with the items produced so far (open ones incomplete)."""
        output: list[dict[str, Any]] = []
        for item in self._items:
            if isinstance(item, _Text):
                output.append(message_item(item.item_id, item.text, "incomplete"))
            elif isinstance(item, _Call):
                output.append(
                    function_call_item(
                        item.item_id, item.call_id, item.name, item.arguments, "incomplete"
                    )
                )
            else:
                output.append(item)
        final = failed_response(self._response, output, message)
        self._final = final
        return [
            self._event("error", code="server_error", message=message, param=None),
            self._event("response.failed", response=final),
        ]
