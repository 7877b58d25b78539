"""The configured cap on generated tokens (GATEWAY_MAX_TOKENS), applied to every dialect.

Every dialect reaches the worker as an OpenAI body whose `max_tokens` carries the client's limit
(Ollama `num_predict`, Anthropic `max_tokens`, Responses `max_output_tokens` are translated into
it), so the cap is checked in one place. Asking for more than the cap is 400, as OpenAI answers a
`max_tokens` above the model's limit; asking for nothing gets the cap, so no request generates
without bound. A negative value (llama-server: "until the context is full") counts as too many.
"""

from __future__ import annotations

import orjson

from services.gateway import errors

__all__ = ["TOKEN_FIELDS", "cap_max_tokens"]

# The OpenAI names for the limit, and llama-server's own.
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict")


def cap_max_tokens(body: bytes, cap: int) -> bytes:
    """`body` unchanged when within `cap` (0: no cap), with `max_tokens: cap` when it sets no
    limit; InvalidRequest when it asks for more."""
    if cap <= 0:
        return body
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # the route already refused it; nothing to cap
    if not isinstance(payload, dict):
        return body
    limited = False
    for name in TOKEN_FIELDS:
        value = payload.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, int):
            continue
        if value < 0 or value > cap:
            # A negative value asks llama-server for no limit at all.
            asked = f"{value} (no limit)" if value < 0 else str(value)
            raise errors.InvalidRequest(
                f"{name} is {asked}, but this server generates at most {cap} tokens "
                "(max_tokens, num_predict and max_output_tokens may be at most that)",
                param=name,
            )
        limited = True
    if limited:
        return body
    payload["max_tokens"] = cap
    return orjson.dumps(payload)
