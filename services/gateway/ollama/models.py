"""Wire types of Ollama's request bodies (pydantic, at the edge only).

Unknown keys are ignored, as Ollama's own JSON decoding ignores them. `model` may also arrive as
the legacy `name` (older clients and Ollama's own CLI for show/delete/pull). Values whose meaning
depends on their shape (`format`, `keep_alive`, `options`) are kept raw here and interpreted by
options.py, which can then name the field in its error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatRequest",
    "CopyRequest",
    "EmbedRequest",
    "EmbeddingsRequest",
    "GenerateRequest",
    "Message",
    "ModelRequest",
    "ToolCall",
    "ToolCallFunction",
    "TransferRequest",
]

# What a JSON `keep_alive` may be: seconds, or a duration string such as "5m".
KeepAlive = float | str | None
# `format`: "" or "json", or a JSON schema object.
Format = str | dict[str, Any] | None


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Named(_Wire):
    model: str = ""
    name: str = ""

    @property
    def model_name(self) -> str:
        """`model`, else the legacy `name`; "" when neither is given."""
        return (self.model or self.name).strip()


class ToolCallFunction(_Wire):
    name: str
    # Ollama sends an object; a string (OpenAI's habit, some clients mix them up) is taken as is.
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(_Wire):
    id: str = ""
    function: ToolCallFunction


class Message(_Wire):
    role: str
    content: str | None = None
    # Base64-encoded images (Ollama sends no MIME type).
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    # Ollama names the tool whose result a `tool` message carries; OpenAI-minded clients send
    # the call's id instead.
    tool_name: str = ""
    tool_call_id: str = ""
    thinking: str = ""


class _Generation(_Named):
    format: Format = None
    options: dict[str, Any] | None = None
    stream: bool | None = None
    keep_alive: KeepAlive = None
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @property
    def streaming(self) -> bool:
        # Ollama streams unless told not to.
        return self.stream is not False


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Generation):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class EmbedRequest(_Named):
    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Named):
    """The legacy `/api/embeddings`: one prompt, one (unnormalised in Ollama) vector."""

    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class ModelRequest(_Named):
    """`/api/show` and `/api/delete`: just the model (`verbose` is accepted and ignored)."""


class TransferRequest(_Named):
    """`/api/pull` and `/api/push`. `insecure` is the registry's business (INSECURE_REGISTRY)."""

    insecure: bool = False
    stream: bool | None = None

    @property
    def streaming(self) -> bool:
        return self.stream is not False


class CopyRequest(_Wire):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)
