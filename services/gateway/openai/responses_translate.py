"""Responses API <-> llama-server's chat completions (pure functions).

Request: the instructions become the system message, then the stored conversation (from
`previous_response_id`) and this request's input items become chat messages: message items keep
their role, consecutive function_call items become one assistant message's `tool_calls`, and a
function_call_output becomes a `tool` message. Function tools, `tool_choice` (an object choice
narrowed as tool_choice.py does), `max_output_tokens`, sampling and `text.format` map onto their
chat counterparts.

Answer: a chat.completion becomes the Response object: a `message` output item with the text
(`output_text` part), then one `function_call` item per tool call; usage in the Responses names;
status `incomplete` with reason `max_output_tokens` when generation hit the token limit. The
streaming translation (responses_stream.py) builds its items with the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from services.gateway import errors
from services.gateway.openai.responses_request import CreateRequest, Item, new_id
from services.gateway.openai.tool_choice import narrow_tool_choice

__all__ = [
    "chat_body",
    "chat_messages",
    "failed_response",
    "finished_response",
    "function_call_item",
    "message_item",
    "new_response",
    "response_from_chat",
    "usage_from_chat",
]


def _chat_part(part: Mapping[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "input_image":
        return {"type": "image_url", "image_url": {"url": part["image_url"]}}
    text = part.get("refusal") if kind == "refusal" else part.get("text")
    return {"type": "text", "text": text or ""}


def _chat_content(parts: Iterable[Mapping[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (what every chat template renders); several as a list."""
    converted = [_chat_part(part) for part in parts]
    if len(converted) == 1 and converted[0]["type"] == "text":
        return str(converted[0]["text"])
    if not converted:
        return ""
    return converted


def chat_messages(items: Iterable[Item]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            messages.append({"role": item["role"], "content": _chat_content(item["content"])})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            # Text and calls of one assistant turn are one chat message.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
        # Reasoning items have no chat form; the model never sees them again.
    return messages


def _chat_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _response_format(text_format: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = text_format.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        return None
    schema: dict[str, Any] = {
        "name": text_format.get("name") or "response",
        "schema": text_format["schema"],
    }
    for key in ("description", "strict"):
        if text_format.get(key) is not None:
            schema[key] = text_format[key]
    return {"type": "json_schema", "json_schema": schema}


def chat_body(request: CreateRequest, history: Iterable[Item] = ()) -> dict[str, Any]:
    """The chat completions body for `request`, continuing the conversation `history`."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages.extend(chat_messages((*history, *request.input_items)))
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream}
    if request.stream:
        # Usage arrives in a last chunk only when asked for; response.completed carries it.
        body["stream_options"] = {"include_usage": True}
    if request.tools:
        tools, choice = narrow_tool_choice(
            [_chat_tool(tool) for tool in request.tools], request.tool_choice
        )
        body["tools"] = tools
        body["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    elif isinstance(request.tool_choice, Mapping):
        raise errors.InvalidRequest(
            "tool_choice names a function but no tools are given", param="tool_choice"
        )
    optional = {
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "user": request.user,
        "reasoning_effort": request.reasoning_effort,
        "response_format": _response_format(request.text_format),
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def new_response(request: CreateRequest, response_id: str, created_at: int) -> dict[str, Any]:
    """The Response object as it stands before generation (status `in_progress`)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": request.reasoning_effort, "summary": None},
        "store": request.store,
        "temperature": request.temperature,
        "text": {"format": dict(request.text_format)},
        "tool_choice": request.tool_choice,
        "tools": [dict(tool) for tool in request.tools],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
        "metadata": dict(request.metadata),
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def usage_from_chat(usage: object) -> dict[str, Any] | None:
    if not isinstance(usage, Mapping):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached or 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def finished_response(
    response: Mapping[str, Any],
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    finish_reason: object,
) -> dict[str, Any]:
    """`response` completed, or incomplete when the token limit cut it (finish_reason length)."""
    cut = finish_reason == "length"
    return {
        **response,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": output,
        "usage": usage,
    }


def failed_response(
    response: Mapping[str, Any], output: list[dict[str, Any]], message: str
) -> dict[str, Any]:
    return {
        **response,
        "status": "failed",
        "error": {"code": "server_error", "message": message},
        "output": output,
    }


def response_from_chat(response: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """`response` finished with llama-server's chat.completion `answer`."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise errors.UpstreamError("llama-server answered without choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise errors.UpstreamError("llama-server answered without a message")
    finish_reason = choice.get("finish_reason")
    status = "incomplete" if finish_reason == "length" else "completed"
    output: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str) and content:
        output.append(message_item(new_id("msg"), content, status))
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        output.append(
            function_call_item(
                new_id("fc"),
                str(call.get("id") or new_id("call")),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
                status,
            )
        )
    return finished_response(response, output, usage_from_chat(answer.get("usage")), finish_reason)
