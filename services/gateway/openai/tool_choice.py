"""OpenAI's object-valued `tool_choice`, rewritten into the form llama-server honours.

llama-server reads `tool_choice` only as a string ("auto", "none", "required"); an object such as
`{"type": "function", "function": {"name": "get_weather"}}` has the wrong type for it, so it logs a
warning and falls back to "auto" (tools/server/server-common.cpp `json_value`): the client asked
for one function and the model may call another or none. The same request means, to llama-server:
the tool list narrowed to the named function, and "required". Allowed-tools objects narrow the list
the same way and keep their mode. String choices and bodies without tools are left alone, so the
common case keeps its bytes.

Both dialects' shapes are accepted, so the Responses API's translation uses the same code:
chat completions `{"type": "function", "function": {"name"}}` and `{"type": "allowed_tools",
"allowed_tools": {"mode", "tools": [{"type": "function", "function": {"name"}}]}}`; Responses
`{"type": "function", "name"}` and `{"type": "allowed_tools", "mode", "tools": [{"type":
"function", "name"}]}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.gateway import errors

__all__ = ["narrow_tool_choice", "rewrite_chat_tool_choice"]

_PARAM = "tool_choice"
_MODES = ("auto", "required", "none")


def _function_name(reference: object) -> str | None:
    """The name in `{"type": "function", "function": {"name"}}` or `{"type": "function", "name"}`."""
    if not isinstance(reference, Mapping) or reference.get("type") != "function":
        return None
    inner = reference.get("function")
    name = inner.get("name") if isinstance(inner, Mapping) else reference.get("name")
    return name if isinstance(name, str) and name else None


def _tool_name(tool: object) -> str | None:
    """A chat completions tool's function name (`{"type": "function", "function": {"name"}}`)."""
    if not isinstance(tool, Mapping):
        return None
    function = tool.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) else None


def _allowed(choice: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Mode and function names of an allowed-tools choice, in either dialect's shape."""
    spec = choice.get("allowed_tools", choice)
    if not isinstance(spec, Mapping):
        raise errors.InvalidRequest("tool_choice.allowed_tools must be an object", param=_PARAM)
    mode = spec.get("mode", "auto")
    if mode not in _MODES:
        raise errors.InvalidRequest(
            f"tool_choice mode must be one of {', '.join(_MODES)}, got {mode!r}", param=_PARAM
        )
    references = spec.get("tools")
    if not isinstance(references, list) or not references:
        raise errors.InvalidRequest(
            "tool_choice of type allowed_tools needs a non-empty tools list", param=_PARAM
        )
    names: list[str] = []
    for reference in references:
        name = _function_name(reference)
        if name is None:
            raise errors.InvalidRequest(
                "tool_choice allowed tools must be function references with a name", param=_PARAM
            )
        names.append(name)
    return str(mode), names


def narrow_tool_choice(tools: Sequence[Any], choice: object) -> tuple[list[Any], object]:
    """(tools, tool_choice) for llama-server: an object choice becomes a narrowed tool list and a
    string choice; anything else comes back unchanged. `tools` are chat completions tools.

    Raises errors.InvalidRequest for an object choice that names a function not in `tools`.
    """
    if not isinstance(choice, Mapping):
        return list(tools), choice
    kind = choice.get("type")
    if kind == "function":
        name = _function_name(choice)
        if name is None:
            raise errors.InvalidRequest("tool_choice names no function", param=_PARAM)
        mode, names = "required", [name]
    elif kind == "allowed_tools":
        mode, names = _allowed(choice)
    else:
        raise errors.InvalidRequest(
            f"tool_choice type {kind!r} is not supported; use a string, a function or "
            "allowed_tools",
            param=_PARAM,
        )
    available = {_tool_name(tool) for tool in tools}
    missing = [name for name in names if name not in available]
    if missing:
        raise errors.InvalidRequest(
            f"tool_choice names function {missing[0]!r}, which is not in tools", param=_PARAM
        )
    wanted = set(names)
    return [tool for tool in tools if _tool_name(tool) in wanted], mode


def rewrite_chat_tool_choice(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """A chat completions body with an object `tool_choice` rewritten for llama-server, or None
    when the body needs no change (no object choice, or no tools to narrow)."""
    choice = payload.get("tool_choice")
    tools = payload.get("tools")
    if not isinstance(choice, Mapping) or not isinstance(tools, list):
        return None
    narrowed, mode = narrow_tool_choice(tools, choice)
    return {**payload, "tools": narrowed, "tool_choice": mode}
