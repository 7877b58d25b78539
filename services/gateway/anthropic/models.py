"""Wire types of the Anthropic Messages API's request bodies (pydantic, at the edge only).

Strict where Anthropic is strict (types, `max_tokens` required, known block types, the
tool_choice variants), lenient about fields this gateway has no use for (`cache_control`,
`citations`, `service_tier`, beta fields): they are accepted and ignored, so clients that send
them keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from services.gateway import errors

__all__ = [
    "Base64Source",
    "ContentBlock",
    "CountTokensRequest",
    "ImageBlock",
    "InputMessage",
    "JsonOutputFormat",
    "MessagesRequest",
    "Metadata",
    "OutputConfig",
    "RedactedThinkingBlock",
    "TextBlock",
    "ThinkingBlock",
    "ThinkingConfig",
    "Tool",
    "ToolChoice",
    "ToolResultBlock",
    "ToolUseBlock",
    "UrlSource",
    "parse_count_tokens",
    "parse_messages",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


_Body = TypeVar("_Body", bound=_Wire)


class TextBlock(_Wire):
    type: Literal["text"]
    text: str


class Base64Source(_Wire):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Wire):
    type: Literal["url"]
    url: str


class ImageBlock(_Wire):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]


class ToolUseBlock(_Wire):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Wire):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool = False


class ThinkingBlock(_Wire):
    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(_Wire):
    type: Literal["redacted_thinking"]
    data: str = ""


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class InputMessage(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(_Wire):
    """A client tool; Anthropic's server tools (web search, code execution...) run on
    Anthropic's side and have no counterpart here."""

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _client_tools_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") not in (None, "custom"):
            raise ValueError(
                f"tool type {data.get('type')!r} is not supported: only client tools "
                "(name, description, input_schema) can be used with local models"
            )
        return data


class ToolChoice(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False

    @pydantic.model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's name")
        return self


class Metadata(_Wire):
    user_id: str | None = None


class JsonOutputFormat(_Wire):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, populate_by_name=True)

    type: Literal["json_schema"]
    # `schema` would shadow a BaseModel attribute.
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Wire):
    format: JsonOutputFormat | None = None


class ThinkingConfig(_Wire):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class CountTokensRequest(_Wire):
    """The body of `/v1/messages/count_tokens`: what shapes the prompt, no sampling."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    # Tagged like the message blocks, so that validation errors name the same path shapes.
    system: str | list[Annotated[TextBlock, Field(discriminator="type")]] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


class MessagesRequest(CountTokensRequest):
    """The body of `/v1/messages`."""

    max_tokens: int = Field(ge=1)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    metadata: Metadata | None = None
    # Structured outputs; `output_format` is the beta's name for `output_config.format`.
    output_config: OutputConfig | None = None
    output_format: JsonOutputFormat | None = None


def parse_messages(payload: Any) -> MessagesRequest:
    return _parse(MessagesRequest, payload)


def parse_count_tokens(payload: Any) -> CountTokensRequest:
    return _parse(CountTokensRequest, payload)


def _parse(model: type[_Body], payload: Any) -> _Body:
    if not isinstance(payload, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise errors.InvalidRequest(_describe(exc, payload)) from None


def _describe(exc: pydantic.ValidationError, payload: Any) -> str:
    """`messages.0.content.1.text: Field required`, as Anthropic words its validation errors.

    A value that matches no branch of a union (a string or a list of blocks) fails in each; the
    deepest failure is the one that says what is wrong inside the value the client meant."""
    first = max(exc.errors(include_url=False), key=lambda error: len(error["loc"]))
    where = _path(first["loc"], payload)
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _path(loc: tuple[int | str, ...], payload: Any) -> str:
    """The location in the client's own terms: pydantic's union branch names (`str`,
    `list[...]`) and the block tags it inserts after a tagged list item or image source are
    dropped, which needs the payload to tell a tag from a field of the same name."""
    parts: list[str] = []
    node: Any = payload
    tagged = False
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in ("str", "list")):
            continue
        if tagged and isinstance(node, dict) and part == node.get("type"):
            tagged = False
            continue
        parts.append(str(part))
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            node, tagged = node[part], True
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            node, tagged = node[part], part == "source"
        else:
            node, tagged = None, False
    return ".".join(parts)
