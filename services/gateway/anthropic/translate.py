"""Anthropic Messages request -> llama-server's OpenAI chat request (pure functions).

Blocks map onto OpenAI messages: text and images stay in their turn, `tool_use` becomes the
assistant's `tool_calls` (input serialised as the arguments string), each `tool_result` a `tool`
message placed right after the assistant turn that called it (before the rest of the user's turn,
as OpenAI requires), thinking blocks are dropped (they were the model's scratch work, which chat
templates do not take back). Consecutive turns of one role are merged into one, as Anthropic does.

Tools: with `tool_choice` auto or none the tools are offered in OpenAI's shape, and a model whose
chat template and llama-server's parser support tool calls answers with `tool_calls`. A forced
call (`any`, `tool`) cannot rely on that: llama-server ignores a named `tool_choice` object and,
for templates it has no tool-call parser for, `"required"` as well (measured with SmolLM2 and a
Hermes-style template on this build). So the gateway forces the call itself: the tool is
described in the system prompt and the output is constrained to its input schema with
`response_format` (llama-server turns it into a grammar), which works with every model. With
several tools to choose from (`any`), the output is `{"name": ..., "input": ...}`, one branch per
tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from services.gateway import errors
from services.gateway.anthropic.models import (
    CountTokensRequest,
    ImageBlock,
    InputMessage,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolResultBlock,
    ToolUseBlock,
)

__all__ = ["Translation", "chat_request", "count_tokens_request", "has_images"]

# Prefixed to a tool_result's text when the client marks it as an error: OpenAI's tool message
# has no such flag, and the model should still learn that the call failed.
_ERROR_PREFIX = "Error: "


@dataclass(frozen=True, slots=True)
class Translation:
    """The OpenAI body for llama-server, and what reading its answer needs to know."""

    body: dict[str, Any]
    # The tools the output must call, when the gateway forces the call: () when the model answers
    # freely; one name: the output is that tool's input; several: `{"name", "input"}`.
    forced_tools: tuple[str, ...] = ()
    stop_sequences: tuple[str, ...] = ()
    # The text of a final assistant turn, which the answer continues (Anthropic's prefill).
    # llama-server repeats it at the start of its answer; Anthropic's answer holds only what
    # follows, so the reader strips it.
    prefill: str = ""

    @property
    def wrapped(self) -> bool:
        return len(self.forced_tools) > 1


def has_images(request: CountTokensRequest) -> bool:
    """Whether a turn holds an image (images inside tool results are refused on their own)."""
    return any(
        isinstance(block, ImageBlock)
        for message in request.messages
        if not isinstance(message.content, str)
        for block in message.content
    )


def chat_request(request: MessagesRequest) -> Translation:
    """The OpenAI chat body for a Messages request; raises errors.InvalidRequest."""
    forced = _forced_tools(request)
    body = _prompt(request, forced)
    body["max_tokens"] = request.max_tokens
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.metadata is not None and request.metadata.user_id:
        # OpenAI's `user` is what routing_hints turns into the affinity key.
        body["user"] = request.metadata.user_id
    stops = tuple(request.stop_sequences or ())
    if stops and not forced:
        # Stop sequences would cut a forced call's JSON short; they apply to free text only.
        body["stop"] = list(stops)
        # llama-server's per-request `verbose` adds `__verbose.stopping_word` to the (last)
        # answer: the only way its OpenAI API tells a stop sequence from the end of the turn.
        body["verbose"] = True
    else:
        stops = ()
    output_format = request.output_config.format if request.output_config else None
    output_format = output_format or request.output_format
    if output_format is not None:
        if forced:
            raise errors.InvalidRequest(
                "output_config.format cannot be combined with a tool_choice that forces a call",
                param="output_config",
            )
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": output_format.json_schema},
        }
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        # The first streamed chunk then carries `prompt_progress` with the prompt's token count
        # (and how much of it was cached), which message_start reports as its usage.
        body["return_progress"] = True
    # Messages whose content is all empty (`"content": []`) translate to none at all.
    last = body["messages"][-1] if body["messages"] else {"role": "user"}
    prefill = ""
    if not forced and last["role"] == "assistant" and "tool_calls" not in last:
        prefill = last["content"]
    return Translation(body=body, forced_tools=forced, stop_sequences=stops, prefill=prefill)


def count_tokens_request(request: CountTokensRequest) -> dict[str, Any]:
    """The OpenAI body whose `usage.prompt_tokens` is the request's input size.

    The prompt is rendered exactly as for `/v1/messages` (same template, tools, forced-call
    instructions), and llama-server tokenizes it: one generated token is the least a chat
    completion allows (`max_tokens: 0` means no limit there).
    """
    body = _prompt(request, _forced_tools(request))
    body["max_tokens"] = 1
    body["temperature"] = 0.0
    return body


def _prompt(request: CountTokensRequest, forced: tuple[str, ...]) -> dict[str, Any]:
    tools = {tool.name: tool for tool in request.tools or ()}
    system = _system_text(request.system)
    if forced:
        instructions = _forcing_instructions([tools[name] for name in forced])
        system = f"{system}\n\n{instructions}" if system else instructions
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in _merged(request.messages):
        messages.extend(_openai_messages(message))
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if forced:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "tool_call", "schema": _forced_schema(tools, forced)},
        }
    elif tools:
        body["tools"] = [_openai_tool(tool) for tool in tools.values()]
        choice = request.tool_choice
        body["tool_choice"] = "none" if choice is not None and choice.type == "none" else "auto"
        if choice is not None and choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if request.thinking is not None:
        # Templates of reasoning models (Qwen3, DeepSeek R1 distills...) read this switch.
        enabled = request.thinking.type != "disabled"
        body["chat_template_kwargs"] = {"enable_thinking": enabled}
    return body


def _forced_tools(request: CountTokensRequest) -> tuple[str, ...]:
    choice = request.tool_choice
    tools = request.tools or []
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise errors.InvalidRequest("tools: tool names must be unique", param="tools")
    if choice is None or choice.type in ("auto", "none"):
        return ()
    if not tools:
        raise errors.InvalidRequest(
            f"tool_choice: type {choice.type!r} needs at least one tool in `tools`",
            param="tool_choice",
        )
    if choice.type == "tool":
        assert choice.name is not None  # models.ToolChoice requires it
        if choice.name not in names:
            raise errors.InvalidRequest(
                f"tool_choice: tool {choice.name!r} is not one of the tools given",
                param="tool_choice",
            )
        return (choice.name,)
    return tuple(names)


def _system_text(system: str | Sequence[TextBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n".join(block.text for block in system)


def _schema_text(schema: dict[str, Any]) -> str:
    return orjson.dumps(schema).decode()


def _forcing_instructions(tools: Sequence[Tool]) -> str:
    if len(tools) == 1:
        tool = tools[0]
        about = f" ({tool.description})" if tool.description else ""
        return (
            f"Answer by calling the tool `{tool.name}`{about}. Reply with only the JSON object "
            f"of its input, which follows this JSON schema: {_schema_text(tool.input_schema)}"
        )
    lines = [
        "Answer by calling exactly one of these tools. Reply with only a JSON object "
        '{"name": <the tool\'s name>, "input": <its input, following the tool\'s schema>}.',
        "Tools:",
    ]
    for tool in tools:
        about = f": {tool.description}" if tool.description else ""
        lines.append(f"- `{tool.name}`{about}; input schema: {_schema_text(tool.input_schema)}")
    return "\n".join(lines)


def _forced_schema(tools: dict[str, Tool], forced: tuple[str, ...]) -> dict[str, Any]:
    if len(forced) == 1:
        return tools[forced[0]].input_schema
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "input": tools[name].input_schema,
                },
                "required": ["name", "input"],
                "additionalProperties": False,
            }
            for name in forced
        ]
    }


def _openai_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _merged(messages: Sequence[InputMessage]) -> list[InputMessage]:
    """Consecutive turns of one role as one turn, their blocks in order."""
    merged: list[InputMessage] = []
    for message in messages:
        if merged and merged[-1].role == message.role:
            previous = merged[-1]
            merged[-1] = InputMessage(
                role=message.role, content=[*_blocks(previous), *_blocks(message)]
            )
        else:
            merged.append(message)
    return merged


def _blocks(message: InputMessage) -> list[Any]:
    if isinstance(message.content, str):
        return [TextBlock(type="text", text=message.content)]
    return list(message.content)


def _openai_messages(message: InputMessage) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "assistant":
        return [_assistant_message(message.content)]
    return _user_messages(message.content)


def _assistant_message(blocks: Sequence[Any]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": _schema_text(block.input)},
                }
            )
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            continue
        else:
            raise errors.InvalidRequest(
                f"messages: an assistant turn cannot contain a {block.type!r} block",
                param="messages",
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def _user_messages(blocks: Sequence[Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, ToolResultBlock):
            results.append(
                {"role": "tool", "tool_call_id": block.tool_use_id, "content": _tool_text(block)}
            )
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            continue
        else:
            raise errors.InvalidRequest(
                f"messages: a user turn cannot contain a {block.type!r} block", param="messages"
            )
    if parts:
        results.append({"role": "user", "content": _user_content(parts)})
    return results


def _user_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    # Text alone is sent as one string: every chat template renders that, not all render parts.
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _image_part(block: ImageBlock) -> dict[str, Any]:
    source = block.source
    if source.type == "base64":
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_text(block: ToolResultBlock) -> str:
    if isinstance(block.content, str):
        text = block.content
    else:
        if any(isinstance(part, ImageBlock) for part in block.content):
            raise errors.InvalidRequest(
                "messages: images inside a tool_result are not supported; "
                "send the image in the user turn instead",
                param="messages",
            )
        text = "\n".join(part.text for part in block.content if isinstance(part, TextBlock))
    return _ERROR_PREFIX + text if block.is_error else text
