"""What the simulation needs from a request body: its prompt tokens and how many to generate.

Tokens are whitespace-separated words: crude, but it keeps prompt-cache prefixes meaningful (a
conversation's next turn starts with the words of the previous one, answer included).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.worker.engine import Endpoint

__all__ = ["BadRequest", "SimRequest", "parse_request"]

# llama-server's own name first, then OpenAI's newer and older names.
_MAX_TOKEN_KEYS = ("n_predict", "max_completion_tokens", "max_tokens")


class BadRequest(ValueError):
    """The body cannot be served; llama-server would answer 400."""


@dataclass(frozen=True)
class SimRequest:
    endpoint: Endpoint
    # The prompt's tokens; for embeddings, every input's tokens concatenated.
    tokens: tuple[str, ...]
    # Embeddings only: each input's tokens.
    inputs: tuple[tuple[str, ...], ...] = ()
    # None: the request does not say.
    max_tokens: int | None = None
    stream: bool = False
    # stream_options.include_usage: a last chunk carries `usage` (OpenAI's streaming usage).
    include_usage: bool = False


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _content_words(content: Any) -> tuple[str, ...]:
    if isinstance(content, str):
        return _words(content)
    if isinstance(content, list):
        words: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                words += _words(part["text"])
        return tuple(words)
    return ()


def _chat_tokens(body: dict[str, Any]) -> tuple[str, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array")
    words: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("every message must be an object")
        words += _content_words(message.get("content"))
    return tuple(words)


def _token_input(value: Any, name: str) -> tuple[str, ...]:
    """A string, or an array of token ids (kept as their decimal text)."""
    if isinstance(value, str):
        return _words(value)
    if isinstance(value, list) and all(isinstance(item, int) for item in value):
        return tuple(str(item) for item in value)
    raise BadRequest(f"'{name}' must be a string, an array of strings or of token ids")


def _inputs(value: Any, name: str) -> tuple[tuple[str, ...], ...]:
    if isinstance(value, list) and value and not all(isinstance(item, int) for item in value):
        return tuple(_token_input(item, name) for item in value)
    return (_token_input(value, name),)


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in _MAX_TOKEN_KEYS:
        value = body.get(key)
        # -1 is llama-server's "until the context is full": the simulation's default instead.
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def parse_request(endpoint: Endpoint, body: bytes) -> SimRequest:
    """BadRequest unless `body` is a JSON object the endpoint can serve."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise BadRequest("the body must be a JSON object")
    if endpoint is Endpoint.EMBEDDINGS:
        if "input" not in parsed and "content" not in parsed:
            raise BadRequest("'input' is required")
        inputs = _inputs(parsed.get("input", parsed.get("content")), "input")
        return SimRequest(endpoint, _join(inputs), inputs=inputs)
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        tokens = _chat_tokens(parsed)
    else:
        if "prompt" not in parsed:
            raise BadRequest("'prompt' is required")
        tokens = _join(_inputs(parsed["prompt"], "prompt"))
    options = parsed.get("stream_options")
    return SimRequest(
        endpoint,
        tokens,
        max_tokens=_max_tokens(parsed),
        stream=parsed.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )


def _join(inputs: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(token for tokens in inputs for token in tokens)
