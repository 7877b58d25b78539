"""A Responses API create body, validated and normalized (pure functions).

`parse_create` checks the fields the gateway acts on and turns `input` into normalized items, the
shape `GET /responses/{id}/input_items` lists and that a later `previous_response_id` replays:
every item has an `id`, a `type` and a `status`; message content is always a list of parts. Fields
that only make sense for OpenAI's hosted service (background mode, stored prompts, conversations)
are refused rather than silently ignored; others that change nothing here (`include`,
`truncation`, `service_tier`, ...) are accepted and ignored, as DMR does.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.gateway import errors

__all__ = ["CreateRequest", "Item", "new_id", "parse_create"]

Item = Mapping[str, Any]

_ROLES = ("user", "assistant", "system", "developer")
_TOOL_CHOICES = ("auto", "none", "required")
_TEXT_PARTS = ("input_text", "output_text", "text")
_FORMATS = ("text", "json_object", "json_schema")
# Hosted-service features with no local meaning: refused, so a client does not believe them on.
_UNSUPPORTED = {
    "conversation": "conversations are not supported; use previous_response_id",
    "prompt": "stored prompt templates are not supported",
}


def new_id(prefix: str) -> str:
    """OpenAI-style ids: `resp_...`, `msg_...`, `fc_...`, `call_...`."""
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass(frozen=True, slots=True)
class CreateRequest:
    model: str
    input_items: tuple[Item, ...]
    instructions: str | None = None
    # Function tools in the Responses shape: {type, name, description, parameters, strict}.
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: object = "auto"
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    # `text.format` as given: {"type": "text" | "json_object" | "json_schema", ...}.
    text_format: Mapping[str, Any] = field(default_factory=lambda: {"type": "text"})
    store: bool = True
    stream: bool = False
    previous_response_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    user: str | None = None
    reasoning_effort: str | None = None
    # Not in OpenAI's Responses API; llama.cpp's sampling seed, taken when a client sends it.
    seed: int | None = None


def _invalid(message: str, param: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param)


def _string(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _invalid(f"{key} must be a string", key)


def _boolean(payload: Mapping[str, Any], key: str) -> bool | None:
    value = payload.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _invalid(f"{key} must be a boolean", key)


def _number(payload: Mapping[str, Any], key: str) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{key} must be a number", key)
    return float(value)


def _integer(payload: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(f"{key} must be an integer >= {minimum}", key)
    return value


def _object(payload: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = payload.get(key)
    if value is None or isinstance(value, Mapping):
        return value
    raise _invalid(f"{key} must be an object", key)


def _content_part(part: object, role: str, where: str) -> dict[str, Any]:
    if not isinstance(part, Mapping):
        raise _invalid(f"{where} must be an object", "input")
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise _invalid(f"{where}.text must be a string", "input")
        if role == "assistant":
            return {"type": "output_text", "text": text, "annotations": []}
        return {"type": "input_text", "text": text}
    if kind == "refusal":
        refusal = part.get("refusal")
        if not isinstance(refusal, str):
            raise _invalid(f"{where}.refusal must be a string", "input")
        return {"type": "refusal", "refusal": refusal}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _invalid(
                f"{where}: input_image needs an image_url (file ids are not supported)", "input"
            )
        return {"type": "input_image", "image_url": url, "detail": part.get("detail", "auto")}
    raise _invalid(f"{where}: content part type {kind!r} is not supported", "input")


def _message(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = raw.get("role")
    if role not in _ROLES:
        raise _invalid(f"{where}.role must be one of {', '.join(_ROLES)}", "input")
    content = raw.get("content")
    if isinstance(content, str):
        parts = [_content_part({"type": "text", "text": content}, role, where)]
    elif isinstance(content, list):
        parts = [
            _content_part(part, role, f"{where}.content[{index}]")
            for index, part in enumerate(content)
        ]
    else:
        raise _invalid(f"{where}.content must be a string or a list of parts", "input")
    return {
        "id": raw.get("id") or new_id("msg"),
        "type": "message",
        "role": role,
        "content": parts,
        "status": "completed",
    }


def _required_string(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise _invalid(f"{where}.{key} must be a non-empty string", "input")
    return value


def _function_call(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    arguments = raw.get("arguments", "")
    if isinstance(arguments, Mapping):
        arguments = orjson.dumps(arguments).decode()
    if not isinstance(arguments, str):
        raise _invalid(f"{where}.arguments must be a JSON string", "input")
    return {
        "id": raw.get("id") or new_id("fc"),
        "type": "function_call",
        "call_id": _required_string(raw, "call_id", where),
        "name": _required_string(raw, "name", where),
        "arguments": arguments,
        "status": "completed",
    }


def _function_call_output(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    output = raw.get("output")
    if isinstance(output, list):
        texts = [_content_part(part, "tool", f"{where}.output") for part in output]
        output = "".join(str(part.get("text", "")) for part in texts)
    if not isinstance(output, str):
        raise _invalid(f"{where}.output must be a string", "input")
    return {
        "id": raw.get("id") or new_id("fco"),
        "type": "function_call_output",
        "call_id": _required_string(raw, "call_id", where),
        "output": output,
        "status": "completed",
    }


def _input_item(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise _invalid(f"{where} must be an object", "input")
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind == "message":
        return _message(raw, where)
    if kind == "function_call":
        return _function_call(raw, where)
    if kind == "function_call_output":
        return _function_call_output(raw, where)
    if kind == "reasoning":
        # Sent back by clients that replay a whole output; nothing here renders it.
        return dict(raw)
    raise _invalid(f"{where}: input item type {kind!r} is not supported", "input")


def _input_items(value: object) -> tuple[Item, ...]:
    if isinstance(value, str):
        return (_message({"role": "user", "content": value}, "input"),)
    if isinstance(value, list):
        return tuple(_input_item(item, f"input[{index}]") for index, item in enumerate(value))
    raise _invalid("input must be a string or a list of items", "input")


def _tool(raw: object, index: int) -> Mapping[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(raw, Mapping):
        raise _invalid(f"{where} must be an object", "tools")
    if raw.get("type") != "function":
        raise _invalid(
            f"{where}: tool type {raw.get('type')!r} is not supported; only function tools are",
            "tools",
        )
    # DMR also takes the chat completions shape, {"type": "function", "function": {...}}.
    spec = raw.get("function") if isinstance(raw.get("function"), Mapping) else raw
    assert isinstance(spec, Mapping)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{where}.name must be a non-empty string", "tools")
    parameters = spec.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise _invalid(f"{where}.parameters must be a JSON schema object", "tools")
    return {
        "type": "function",
        "name": name,
        "description": spec.get("description"),
        "parameters": parameters,
        "strict": spec.get("strict"),
    }


def _text_format(text: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if text is None or text.get("format") is None:
        return {"type": "text"}
    given = text["format"]
    if not isinstance(given, Mapping) or given.get("type") not in _FORMATS:
        raise _invalid(f"text.format.type must be one of {', '.join(_FORMATS)}", "text.format")
    if given["type"] == "json_schema" and not isinstance(given.get("schema"), Mapping):
        raise _invalid("text.format.schema must be a JSON schema object", "text.format.schema")
    return given


def _tool_choice(value: object) -> object:
    if value is None:
        return "auto"
    if value in _TOOL_CHOICES or isinstance(value, Mapping):
        return value
    raise _invalid(
        f"tool_choice must be one of {', '.join(_TOOL_CHOICES)} or an object", "tool_choice"
    )


def parse_create(payload: object) -> CreateRequest:
    """The validated request; errors.InvalidRequest names the offending field."""
    if not isinstance(payload, Mapping):
        raise errors.InvalidRequest("request body must be a JSON object")
    for key, reason in _UNSUPPORTED.items():
        if payload.get(key) is not None:
            raise _invalid(reason, key)
    if payload.get("background"):
        raise _invalid("background responses are not supported", "background")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model is required", "model")
    if payload.get("input") is None:
        raise _invalid("input is required", "input")
    tools = payload.get("tools") or []
    if not isinstance(tools, list):
        raise _invalid("tools must be a list", "tools")
    metadata = _object(payload, "metadata") or {}
    reasoning = _object(payload, "reasoning") or {}
    effort = reasoning.get("effort")
    return CreateRequest(
        model=model,
        input_items=_input_items(payload["input"]),
        instructions=_string(payload, "instructions"),
        tools=tuple(_tool(tool, index) for index, tool in enumerate(tools)),
        tool_choice=_tool_choice(payload.get("tool_choice")),
        parallel_tool_calls=_boolean(payload, "parallel_tool_calls"),
        max_output_tokens=_integer(payload, "max_output_tokens", 1),
        temperature=_number(payload, "temperature"),
        top_p=_number(payload, "top_p"),
        text_format=_text_format(_object(payload, "text")),
        store=_boolean(payload, "store") is not False,
        stream=bool(_boolean(payload, "stream")),
        previous_response_id=_string(payload, "previous_response_id") or None,
        metadata=metadata,
        user=_string(payload, "user"),
        reasoning_effort=effort if isinstance(effort, str) else None,
        seed=_integer(payload, "seed", -(2**63)),
    )
