"""Ollama requests -> llama-server's OpenAI request bodies (pure functions).

- `/api/chat` -> `/v1/chat/completions`. Messages are translated: images become `image_url`
  parts with data URIs; an assistant's tool calls take OpenAI's shape (arguments as a JSON
  string, an id each); a `tool` message is tied to the call it answers by `tool_name` (Ollama
  sends no call id), else to the oldest unanswered call; `thinking` becomes `reasoning_content`.
  Tools are passed as they are (Ollama's tool schema is OpenAI's). `options`, `format`, `think`
  and `logprobs` as options.py says.
- `/api/generate` -> `/v1/chat/completions` with `system` and `prompt` as two messages, so the
  model's own chat template frames them (what Ollama's TEMPLATE does). `raw: true` ->
  `/v1/completions` with the prompt exactly as given (`system` is then ignored, as in Ollama).
  Refused with a 400 instead of being silently dropped:
  - `template`: a Go text/template replacing the Modelfile's. llama-server renders the model's
    Jinja chat template itself and cannot run Go templates; a client that needs exact control
    formats the prompt itself and sends `raw: true`.
  - `suffix` (fill in the middle) and a non-empty `context` (token ids of an earlier answer;
    these answers never return one, so only a client of another server could send it: use
    /api/chat for conversations).
  - `images` with `raw: true` (images need the chat template's image markers).
- `/api/embed`, `/api/embeddings` -> `/v1/embeddings`.

Streamed requests ask for `stream_options.include_usage`, so the last event carries the token
counts that Ollama's final object reports.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from modelrunner.v1 import common_pb2
from services.gateway import errors
from services.gateway.ollama.models import ChatRequest, GenerateRequest, Message, ToolCall
from services.gateway.ollama.options import (
    chat_response_format,
    completion_json_schema,
    logprob_fields,
    sampling_fields,
    thinking_fields,
)

__all__ = [
    "Translated",
    "chat_request",
    "embeddings_request",
    "generate_request",
    "has_images",
    "openai_messages",
]

# Base64 openings of the image formats llama.cpp's loader reads; anything else is sent as JPEG,
# the loader goes by the bytes anyway.
_MIME_BY_PREFIX = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
    ("Qk", "image/bmp"),
)
_DEFAULT_MIME = "image/jpeg"


@dataclass(frozen=True, slots=True)
class Translated:
    """Where the request goes and the OpenAI body it is sent as."""

    endpoint: common_pb2.EndpointKind.ValueType
    payload: dict[str, Any]


def _image_url(image: str, where: str) -> dict[str, Any]:
    data = "".join(image.split())
    try:
        base64.b64decode(data[:64] + "=" * (-len(data[:64]) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidRequest(f"{where}: images must be base64-encoded") from None
    mime = next((kind for prefix, kind in _MIME_BY_PREFIX if data.startswith(prefix)), None)
    return {
        "type": "image_url",
        "image_url": {"url": f"data:{mime or _DEFAULT_MIME};base64,{data}"},
    }


def _content(text: str, images: Sequence[str] | None, where: str) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts.extend(_image_url(image, where) for image in images)
    return parts


def _openai_call(call: ToolCall, fallback_id: str) -> dict[str, Any]:
    arguments = call.function.arguments
    return {
        "id": call.id or fallback_id,
        "type": "function",
        "function": {
            "name": call.function.name,
            "arguments": arguments
            if isinstance(arguments, str)
            else orjson.dumps(arguments).decode(),
        },
    }


def _answered_call(pending: list[tuple[str, str]], tool_name: str) -> str:
    """The id of the call a tool result answers, removed from `pending`; "" if none is left."""
    for position, (call_id, name) in enumerate(pending):
        if not tool_name or name == tool_name:
            del pending[position]
            return call_id
    return ""


def openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    # Calls of the latest assistant message that no tool message has answered yet.
    pending: list[tuple[str, str]] = []
    for number, message in enumerate(messages):
        entry: dict[str, Any] = {
            "role": message.role,
            "content": _content(message.content or "", message.images, f"messages.{number}"),
        }
        if message.tool_calls:
            calls = [
                _openai_call(call, f"call_{number}_{index}")
                for index, call in enumerate(message.tool_calls)
            ]
            entry["tool_calls"] = calls
            pending = [(call["id"], call["function"]["name"]) for call in calls]
        if message.role == "tool":
            call_id = message.tool_call_id or _answered_call(pending, message.tool_name)
            if call_id:
                entry["tool_call_id"] = call_id
            if message.tool_name:
                entry["name"] = message.tool_name
        if message.thinking and message.role == "assistant":
            entry["reasoning_content"] = message.thinking
        converted.append(entry)
    return converted


def has_images(request: ChatRequest | GenerateRequest) -> bool:
    if isinstance(request, GenerateRequest):
        return bool(request.images)
    return any(message.images for message in request.messages)


def _streaming(payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    else:
        payload["stream"] = False
    return payload


def chat_request(request: ChatRequest) -> Translated:
    payload: dict[str, Any] = {
        "model": request.model_name,
        "messages": openai_messages(request.messages),
    }
    if request.tools:
        payload["tools"] = request.tools
    payload.update(_generation_fields(request))
    return Translated(
        common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS, _streaming(payload, request.streaming)
    )


def _generation_fields(request: ChatRequest | GenerateRequest) -> dict[str, Any]:
    fields = sampling_fields(request.options)
    response_format = chat_response_format(request.format)
    if response_format is not None:
        fields["response_format"] = response_format
    fields.update(thinking_fields(request.think))
    fields.update(logprob_fields(request.logprobs, request.top_logprobs))
    return fields


def _refuse_unsupported(request: GenerateRequest) -> None:
    if request.template.strip():
        raise errors.InvalidRequest(
            "template is not supported: the model's own chat template is applied by "
            "llama-server; format the prompt yourself and send raw: true instead",
            param="template",
        )
    if request.suffix:
        raise errors.InvalidRequest("suffix (fill in the middle) is not supported", param="suffix")
    if request.context:
        raise errors.InvalidRequest(
            "context is not supported: send the conversation's messages to /api/chat",
            param="context",
        )
    if request.raw and request.images:
        raise errors.InvalidRequest(
            "images need the model's chat template and cannot be sent with raw: true",
            param="images",
        )


def generate_request(request: GenerateRequest) -> Translated:
    _refuse_unsupported(request)
    if request.raw:
        payload: dict[str, Any] = {"model": request.model_name, "prompt": request.prompt}
        payload.update(sampling_fields(request.options))
        schema = completion_json_schema(request.format)
        if schema is not None:
            payload["json_schema"] = schema
        return Translated(
            common_pb2.ENDPOINT_KIND_COMPLETIONS, _streaming(payload, request.streaming)
        )
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": _content(request.prompt, request.images, "images")})
    payload = {"model": request.model_name, "messages": messages}
    payload.update(_generation_fields(request))
    return Translated(
        common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS, _streaming(payload, request.streaming)
    )


def embeddings_request(model: str, inputs: Sequence[str]) -> Translated:
    return Translated(
        common_pb2.ENDPOINT_KIND_EMBEDDINGS,
        {"model": model, "input": list(inputs), "encoding_format": "float"},
    )
