"""OpenAI-shaped answer bodies with llama-server's extras (`timings`), as pure functions."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DONE",
    "EMBEDDING_SIZE",
    "FINGERPRINT",
    "Answer",
    "chat_chunk",
    "chat_completion",
    "embedding_vector",
    "embeddings",
    "error_body",
    "final_chat_chunk",
    "final_completion_chunk",
    "piece",
    "sse",
    "text_completion",
    "text_completion_chunk",
    "usage_chunk",
]

# Tells a reader the answer is not a model's.
FINGERPRINT = "simulated"
EMBEDDING_SIZE = 64
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Answer:
    """One request's figures, as llama-server reports them."""

    id: str
    model: str
    created: int
    # Prompt tokens in all, and those found in the slot's cache (not processed).
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prompt_ms: float
    predicted_ms: float
    # "length": stopped at max_tokens or the context size.
    finish_reason: str = "length"

    @property
    def text(self) -> str:
        return "".join(piece(index) for index in range(self.completion_tokens))


def piece(index: int) -> str:
    """The `index`th generated token as streamed: "token0", " token1", ..."""
    return f"token{index}" if index == 0 else f" token{index}"


def _per(ms: float, n: int) -> tuple[float, float]:
    if n == 0 or ms <= 0:
        return 0.0, 0.0
    return ms / n, 1000.0 * n / ms


def _timings(answer: Answer) -> dict[str, Any]:
    processed = answer.prompt_tokens - answer.cached_tokens
    prompt_per_token, prompt_per_second = _per(answer.prompt_ms, processed)
    predicted_per_token, predicted_per_second = _per(answer.predicted_ms, answer.completion_tokens)
    return {
        "cache_n": answer.cached_tokens,
        "prompt_n": processed,
        "prompt_ms": answer.prompt_ms,
        "prompt_per_token_ms": prompt_per_token,
        "prompt_per_second": prompt_per_second,
        "predicted_n": answer.completion_tokens,
        "predicted_ms": answer.predicted_ms,
        "predicted_per_token_ms": predicted_per_token,
        "predicted_per_second": predicted_per_second,
    }


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": answer.cached_tokens},
    }


def _envelope(answer: Answer, kind: str) -> dict[str, Any]:
    return {
        "id": answer.id,
        "object": kind,
        "created": answer.created,
        "model": answer.model,
        "system_fingerprint": FINGERPRINT,
    }


def chat_completion(answer: Answer) -> dict[str, Any]:
    return {
        **_envelope(answer, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": _usage(answer),
        "timings": _timings(answer),
    }


def chat_chunk(answer: Answer, index: int) -> dict[str, Any]:
    """The chunk carrying generated token `index`; the first also names the role."""
    delta: dict[str, Any] = {"content": piece(index)}
    if index == 0:
        delta = {"role": "assistant", **delta}
    return {
        **_envelope(answer, "chat.completion.chunk"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


def final_chat_chunk(answer: Answer) -> dict[str, Any]:
    return {
        **_envelope(answer, "chat.completion.chunk"),
        "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}],
        "timings": _timings(answer),
    }


def usage_chunk(answer: Answer, kind: str) -> dict[str, Any]:
    """OpenAI's last streamed chunk with stream_options.include_usage: no choices, the usage."""
    return {**_envelope(answer, kind), "choices": [], "usage": _usage(answer)}


def text_completion(answer: Answer) -> dict[str, Any]:
    return {
        **_envelope(answer, "text_completion"),
        "choices": [
            {
                "index": 0,
                "text": answer.text,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": _usage(answer),
        "timings": _timings(answer),
    }


def text_completion_chunk(answer: Answer, index: int) -> dict[str, Any]:
    return {
        **_envelope(answer, "text_completion"),
        "choices": [{"index": 0, "text": piece(index), "logprobs": None, "finish_reason": None}],
    }


def final_completion_chunk(answer: Answer) -> dict[str, Any]:
    return {
        **_envelope(answer, "text_completion"),
        "choices": [
            {"index": 0, "text": "", "logprobs": None, "finish_reason": answer.finish_reason}
        ],
        "timings": _timings(answer),
    }


def embedding_vector(tokens: Sequence[str]) -> list[float]:
    """A unit vector of EMBEDDING_SIZE floats, a pure function of the tokens."""
    text = " ".join(tokens).encode()
    raw = b"".join(
        hashlib.sha256(index.to_bytes(2, "big") + text).digest()
        for index in range(math.ceil(EMBEDDING_SIZE / 32))
    )[:EMBEDDING_SIZE]
    values = [byte / 127.5 - 1.0 for byte in raw]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


def embeddings(answer: Answer, inputs: Sequence[Sequence[str]]) -> dict[str, Any]:
    return {
        "object": "list",
        "model": answer.model,
        "data": [
            {"object": "embedding", "index": index, "embedding": embedding_vector(tokens)}
            for index, tokens in enumerate(inputs)
        ],
        "usage": {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens},
        "timings": _timings(answer),
    }


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """llama-server's (and OpenAI's) error shape."""
    return {"error": {"code": status, "message": message, "type": kind}}


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
