"""Routing hints for Scheduler.Assign, from the request's headers and its already-parsed body.

- `affinity_key`: `session:<X-Session-ID>`, else `user:<body.user>`; requests with one key go to
  one replica while load allows, so llama-server's prompt cache there keeps their prefix.
- `prefix_hashes`: 64-bit hashes of the prompt's growing prefixes, shortest first, so the
  scheduler can find the replica that served the longest shared prefix even without a key. Chat:
  one per message, chained (h_i = H(h_{i-1} || message i)), seeded with the `tools` list, which
  chat templates render before the messages. Completions: one per full chunk of the prompt
  string. Embeddings: none (nothing is cached across embedding requests).
- `priority` (`X-Priority`) and `required_tags` (`X-Worker-Tags`): set on purpose by the client,
  so a malformed value is a 400; the body, in contrast, is llama-server's to judge, and a shape
  the hashes do not understand just yields fewer hashes.

Cost: one orjson.dumps and one blake2b per message: about 18 us for a 20-message chat (6 KB)
and 25 us for the 32 chunks of an 8 KB prompt (timeit, one core of the 2-core dev machine).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from modelrunner.v1 import common_pb2
from services.common.env import SettingError, env_tags
from services.gateway import errors
from services.gateway.config import GatewaySettings

__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "PRIORITY_HEADER",
    "SESSION_HEADER",
    "TAGS_HEADER",
    "RoutingHints",
    "affinity_key",
    "chat_prefix_hashes",
    "parse_priority",
    "parse_worker_tags",
    "routing_hints",
    "text_prefix_hashes",
]

SESSION_HEADER = "x-session-id"
PRIORITY_HEADER = "x-priority"
TAGS_HEADER = "x-worker-tags"
MIN_PRIORITY = -100
MAX_PRIORITY = 100

_PRIORITY = re.compile(r"[+-]?[0-9]{1,3}")
# How much of a bad header value an error message repeats.
_ECHO_CHARS = 64
# Different seeds keep a chat's hashes and a completion prompt's hashes apart.
_CHAT_SEED = b"chat\x00"
_TEXT_SEED = b"text\x00"
_DIGEST_BYTES = 8
_KEY_DIGEST_BYTES = 16


@dataclass(frozen=True, slots=True)
class RoutingHints:
    affinity_key: str = ""
    priority: int = 0
    required_tags: tuple[tuple[str, str], ...] = ()
    prefix_hashes: tuple[int, ...] = ()
    # Seconds the model stays loaded after this request (Ollama's keep_alive; negative: never);
    # None leaves the model's keep-alive as it is.
    keep_alive: float | None = None


def routing_hints(
    headers: Mapping[str, str],
    payload: Mapping[str, Any],
    endpoint: common_pb2.EndpointKind.ValueType,
    settings: GatewaySettings,
) -> RoutingHints:
    """The hints for one inference request; raises errors.InvalidRequest for a bad header."""
    if endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS:
        hashes = chat_prefix_hashes(
            payload.get("messages"), payload.get("tools"), settings.max_prefix_hashes
        )
    elif endpoint == common_pb2.ENDPOINT_KIND_COMPLETIONS:
        hashes = text_prefix_hashes(
            payload.get("prompt"), settings.prefix_chunk_chars, settings.max_prefix_hashes
        )
    else:
        hashes = ()
    return RoutingHints(
        affinity_key=affinity_key(
            headers.get(SESSION_HEADER), payload.get("user"), settings.max_affinity_key_chars
        ),
        priority=parse_priority(headers.get(PRIORITY_HEADER)),
        required_tags=parse_worker_tags(headers.get(TAGS_HEADER)),
        prefix_hashes=hashes,
    )


def affinity_key(session: str | None, user: object, max_chars: int) -> str:
    """`session:<id>`, else `user:<user>`, else ""; a key over `max_chars` becomes a hash."""
    if session and (session := session.strip()):
        kind, value = "session", session
    elif isinstance(user, str) and (user := user.strip()):
        kind, value = "user", user
    else:
        return ""
    key = f"{kind}:{value}"
    if len(key) <= max_chars:
        return key
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"), digest_size=_KEY_DIGEST_BYTES
    ).hexdigest()
    return f"{kind}:#{digest}"


def parse_priority(raw: str | None) -> int:
    if raw is None:
        return 0
    value = raw.strip()
    if _PRIORITY.fullmatch(value) and MIN_PRIORITY <= int(value) <= MAX_PRIORITY:
        return int(value)
    raise errors.InvalidRequest(
        f"X-Priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, "
        f"got {raw[:_ECHO_CHARS]!r}",
        param="X-Priority",
    )


def parse_worker_tags(raw: str | None) -> tuple[tuple[str, str], ...]:
    """`key=value,key2=value2` (a bare `key` means `key=true`, as in WORKER_TAGS)."""
    if raw is None:
        return ()
    try:
        tags = env_tags({"X-Worker-Tags": raw}, "X-Worker-Tags")
    except SettingError as exc:
        raise errors.InvalidRequest(str(exc), param="X-Worker-Tags") from None
    for key, value in tags.items():
        if not value:
            raise errors.InvalidRequest(
                f"X-Worker-Tags: tag {key[:_ECHO_CHARS]!r} has an empty value; "
                "use key=value,key2=value2",
                param="X-Worker-Tags",
            )
    return tuple(tags.items())


def _chain(seed: bytes, parts: list[bytes]) -> tuple[int, ...]:
    hashes: list[int] = []
    previous = seed
    for part in parts:
        hasher = hashlib.blake2b(previous, digest_size=_DIGEST_BYTES)
        hasher.update(part)
        previous = hasher.digest()
        hashes.append(int.from_bytes(previous, "big"))
    return tuple(hashes)


def _canonical(value: object) -> bytes:
    # Sorted keys: the same message written with its keys in another order hashes the same.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def chat_prefix_hashes(messages: object, tools: object, limit: int) -> tuple[int, ...]:
    """One hash per message boundary, for the first `limit` messages; () for a malformed list."""
    if not isinstance(messages, list) or limit <= 0:
        return ()
    parts: list[bytes] = []
    for message in messages[:limit]:
        if not isinstance(message, dict):
            break
        parts.append(
            _canonical((message.get("role"), message.get("content"), message.get("tool_calls")))
        )
    seed = _CHAT_SEED + _canonical(tools) if tools else _CHAT_SEED
    return _chain(seed, parts)


def text_prefix_hashes(prompt: object, chunk_chars: int, limit: int) -> tuple[int, ...]:
    """One hash per full `chunk_chars` chunk of a string prompt, for the first `limit` chunks."""
    if isinstance(prompt, list) and len(prompt) == 1:
        # OpenAI allows a batch of prompts; a batch of one is the common single prompt.
        prompt = prompt[0]
    if not isinstance(prompt, str) or limit <= 0:
        return ()
    count = min(len(prompt) // chunk_chars, limit)
    parts = [
        prompt[index * chunk_chars : (index + 1) * chunk_chars].encode("utf-8", "surrogatepass")
        for index in range(count)
    ]
    return _chain(_TEXT_SEED, parts)
