"""Routing hints: what the scheduler's fake receives in AssignRequest for each kind of request."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import httpx
import orjson
import pytest

from modelrunner.v1 import scheduler_pb2
from services.gateway.config import GatewaySettings
from services.gateway.hints import chat_prefix_hashes, text_prefix_hashes
from tests.unit.gateway.conftest import Neighbours, asgi_client
from tests.unit.gateway.fakes import answer
from tests.unit.gateway.test_inference import error_of

CHAT = "/engines/llama.cpp/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/engines/v1/embeddings"

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TURN_1 = [SYSTEM, {"role": "user", "content": "Name one colour."}]
TURN_2 = [
    *TURN_1,
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And another?"},
]


async def assign_for(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> scheduler_pb2.AssignRequest:
    before = len(neighbours.scheduler.assign_requests)
    response = await client.post(path, content=orjson.dumps(body), headers=headers or {})
    assert response.status_code == 200, response.text
    assert len(neighbours.scheduler.assign_requests) == before + 1
    return neighbours.scheduler.assign_requests[-1]


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "ai/smollm2", "messages": messages, **extra}


# --- affinity key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "extra", "key"),
    [
        ({"X-Session-ID": "conv-42"}, {}, "session:conv-42"),
        ({}, {"user": "alice"}, "user:alice"),
        ({"X-Session-ID": "conv-42"}, {"user": "alice"}, "session:conv-42"),
        ({"X-Session-ID": "  "}, {"user": " alice "}, "user:alice"),
        ({}, {"user": ""}, ""),
        ({}, {"user": 7}, ""),
        ({}, {}, ""),
    ],
)
async def test_affinity_key_from_session_header_then_user(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    headers: dict[str, str],
    extra: dict[str, Any],
    key: str,
) -> None:
    assign = await assign_for(client, neighbours, CHAT, chat(TURN_1, **extra), headers)

    assert assign.affinity_key == key


async def test_long_affinity_keys_are_hashed_not_refused(
    client: httpx.AsyncClient, neighbours: Neighbours, settings: GatewaySettings
) -> None:
    long_a, long_b = "a" * 1000, "a" * 999 + "b"

    first = await assign_for(client, neighbours, CHAT, chat(TURN_1), {"X-Session-ID": long_a})
    again = await assign_for(client, neighbours, CHAT, chat(TURN_2), {"X-Session-ID": long_a})
    other = await assign_for(client, neighbours, CHAT, chat(TURN_1), {"X-Session-ID": long_b})
    user = await assign_for(client, neighbours, CHAT, chat(TURN_1, user=long_a))

    assert first.affinity_key.startswith("session:#")
    assert len(first.affinity_key) <= settings.max_affinity_key_chars
    assert again.affinity_key == first.affinity_key
    assert other.affinity_key != first.affinity_key
    assert user.affinity_key.startswith("user:#")


async def test_affinity_key_goes_with_embeddings_but_no_hashes(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, "application/json", b"{}"))
    body = {"model": "ai/smollm2", "input": "x" * 2000, "user": "bob"}

    assign = await assign_for(client, neighbours, EMBEDDINGS, body)

    assert assign.affinity_key == "user:bob"
    assert list(assign.prefix_hashes) == []


# --- prefix hashes: chat --------------------------------------------------------------------


async def test_a_continued_chat_shares_the_first_hashes(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    first = await assign_for(client, neighbours, CHAT, chat(TURN_1))
    second = await assign_for(client, neighbours, CHAT, chat(TURN_2, temperature=0.2))

    assert len(first.prefix_hashes) == 2
    assert len(second.prefix_hashes) == 4
    assert list(second.prefix_hashes[:2]) == list(first.prefix_hashes)
    assert len(set(second.prefix_hashes)) == 4
    assert all(0 <= value < 2**64 for value in second.prefix_hashes)


async def test_a_different_system_prompt_shares_no_hash(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    other_system = [{"role": "system", "content": "You are a pirate."}, *TURN_2[1:]]

    first = await assign_for(client, neighbours, CHAT, chat(TURN_2))
    second = await assign_for(client, neighbours, CHAT, chat(other_system))

    assert len(second.prefix_hashes) == 4
    assert not set(first.prefix_hashes) & set(second.prefix_hashes)


async def test_hashes_ignore_formatting_and_fields_outside_the_prompt(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    compact = await assign_for(client, neighbours, CHAT, chat(TURN_2))
    # Same messages, keys in another order, extra spacing, other sampling parameters.
    reordered = (
        b'{"messages": ['
        + b", ".join(orjson.dumps(dict(reversed(list(message.items())))) for message in TURN_2)
        + b'],   "max_tokens": 5, "model": "smollm2"}'
    )
    response = await client.post(CHAT, content=reordered)
    assert response.status_code == 200

    assert list(neighbours.scheduler.assign_requests[-1].prefix_hashes) == list(
        compact.prefix_hashes
    )


def test_every_part_of_a_message_counts() -> None:
    base = chat_prefix_hashes(TURN_2, None, 32)
    variants = {
        "role": [*TURN_2[:2], {"role": "user", "content": "Blue."}, TURN_2[3]],
        "content": [*TURN_2[:2], {"role": "assistant", "content": "Red."}, TURN_2[3]],
        "parts": [
            *TURN_2[:2],
            {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]},
            TURN_2[3],
        ],
        "tool_calls": [
            *TURN_2[:2],
            {
                "role": "assistant",
                "content": "Blue.",
                "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}],
            },
            TURN_2[3],
        ],
    }
    for name, messages in variants.items():
        hashes = chat_prefix_hashes(messages, None, 32)
        assert hashes[:2] == base[:2], name
        assert hashes[2] != base[2], name
        assert hashes[3] != base[3], name


def test_content_parts_hash_canonically() -> None:
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]
    shuffled = [{"text": "hi", "type": "text"}, {"image_url": {"url": "u"}, "type": "image_url"}]

    assert chat_prefix_hashes([{"role": "user", "content": parts}], None, 32) == (
        chat_prefix_hashes([{"role": "user", "content": shuffled}], None, 32)
    )


def test_tools_seed_the_chain() -> None:
    weather = [{"type": "function", "function": {"name": "weather"}}]
    clock = [{"type": "function", "function": {"name": "clock"}}]

    plain = chat_prefix_hashes(TURN_2, None, 32)
    with_weather = chat_prefix_hashes(TURN_2, weather, 32)

    assert with_weather == chat_prefix_hashes(TURN_2, weather, 32)
    assert not set(plain) & set(with_weather)
    assert not set(with_weather) & set(chat_prefix_hashes(TURN_2, clock, 32))


def test_only_the_shortest_prefixes_are_kept() -> None:
    messages = [{"role": "user", "content": f"message {index}"} for index in range(40)]

    capped = chat_prefix_hashes(messages, None, 32)

    assert len(capped) == 32
    assert capped == chat_prefix_hashes(messages[:32], None, 32)
    assert chat_prefix_hashes(messages, None, 0) == ()


@pytest.mark.parametrize(
    "messages",
    [None, "hello", {"role": "user"}, [], ["not a message", {"role": "user", "content": "x"}]],
)
def test_malformed_messages_give_no_hashes(messages: object) -> None:
    assert chat_prefix_hashes(messages, None, 32) == ()


def test_hashing_stops_at_the_first_malformed_message() -> None:
    messages = [*TURN_1, "oops", {"role": "user", "content": "later"}]

    assert chat_prefix_hashes(messages, None, 32) == chat_prefix_hashes(TURN_1, None, 32)


async def test_malformed_messages_are_still_forwarded(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    assign = await assign_for(client, neighbours, CHAT, {"model": "m", "messages": "hi"})

    assert list(assign.prefix_hashes) == []
    assert neighbours.worker.requests[-1].body == orjson.dumps({"model": "m", "messages": "hi"})


async def test_max_prefix_hashes_setting_applies(
    settings: GatewaySettings, neighbours: Neighbours
) -> None:
    messages = [{"role": "user", "content": f"message {index}"} for index in range(10)]
    limited = dataclasses.replace(settings, max_prefix_hashes=3)
    async with asgi_client(limited) as client:
        assign = await assign_for(client, neighbours, CHAT, chat(messages))

    assert list(assign.prefix_hashes) == list(chat_prefix_hashes(messages, None, 32)[:3])


# --- prefix hashes: completions -------------------------------------------------------------


def test_prompt_hashes_cover_full_chunks_only() -> None:
    prompt = "abcdefgh" * 100  # 800 chars: 3 full chunks of 256

    hashes = text_prefix_hashes(prompt, 256, 32)
    longer = text_prefix_hashes(prompt + "more text" * 40, 256, 32)

    assert len(hashes) == 3
    assert longer[:3] == hashes
    assert len(longer) == 4
    assert text_prefix_hashes(prompt[:255], 256, 32) == ()
    assert text_prefix_hashes(prompt, 256, 2) == hashes[:2]
    assert text_prefix_hashes([prompt], 256, 32) == hashes
    assert text_prefix_hashes([prompt, prompt], 256, 32) == ()
    assert text_prefix_hashes([1, 2, 3], 256, 32) == ()


def test_prompt_and_chat_hashes_never_mix() -> None:
    text = orjson.dumps(("user", "x" * 300, None), option=orjson.OPT_SORT_KEYS).decode()
    assert not set(text_prefix_hashes(text, 8, 32)) & set(
        chat_prefix_hashes([{"role": "user", "content": "x" * 300}], None, 32)
    )


async def test_completions_send_prompt_hashes(
    client: httpx.AsyncClient, neighbours: Neighbours, settings: GatewaySettings
) -> None:
    prompt = "é" * (settings.prefix_chunk_chars * 2 + 5)

    first = await assign_for(
        client, neighbours, COMPLETIONS, {"model": "ai/smollm2", "prompt": prompt}
    )
    longer = await assign_for(
        client, neighbours, COMPLETIONS, {"model": "ai/smollm2", "prompt": prompt * 2}
    )

    assert len(first.prefix_hashes) == 2
    assert list(longer.prefix_hashes[:2]) == list(first.prefix_hashes)
    assert len(longer.prefix_hashes) == 4


# --- priority and worker tags ---------------------------------------------------------------


@pytest.mark.parametrize(("header", "priority"), [("5", 5), ("-100", -100), (" +100 ", 100)])
async def test_priority_header(
    client: httpx.AsyncClient, neighbours: Neighbours, header: str, priority: int
) -> None:
    assign = await assign_for(client, neighbours, CHAT, chat(TURN_1), {"X-Priority": header})

    assert assign.priority == priority


async def test_priority_defaults_to_zero(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    assign = await assign_for(client, neighbours, CHAT, chat(TURN_1))

    assert assign.priority == 0


@pytest.mark.parametrize("header", ["101", "-101", "high", "1.5", "", "1e2", "0x10", "1\u00b2"])
async def test_bad_priority_is_400_naming_the_header(
    client: httpx.AsyncClient, neighbours: Neighbours, header: str
) -> None:
    # Header values are bytes on the wire; latin-1 lets a non-ASCII digit through.
    response = await client.post(
        CHAT,
        content=orjson.dumps(chat(TURN_1)),
        headers={b"X-Priority": header.encode("latin-1")},
    )

    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "X-Priority"
    assert "X-Priority" in str(error["message"])
    assert not neighbours.scheduler.assign_requests


@pytest.mark.parametrize(
    ("header", "tags"),
    [
        ("gpu=h100,zone=a", {"gpu": "h100", "zone": "a"}),
        (" gpu = h100 , , zone=a ", {"gpu": "h100", "zone": "a"}),
        ("cuda", {"cuda": "true"}),
        ("", {}),
    ],
)
async def test_worker_tags_header(
    client: httpx.AsyncClient, neighbours: Neighbours, header: str, tags: dict[str, str]
) -> None:
    assign = await assign_for(client, neighbours, CHAT, chat(TURN_1), {"X-Worker-Tags": header})

    assert dict(assign.required_tags) == tags


@pytest.mark.parametrize("header", ["=h100", "gpu=", "gpu=h100,=a"])
async def test_bad_worker_tags_are_400(
    client: httpx.AsyncClient, neighbours: Neighbours, header: str
) -> None:
    response = await client.post(
        CHAT, content=orjson.dumps(chat(TURN_1)), headers={"X-Worker-Tags": header}
    )

    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "X-Worker-Tags"
    assert "X-Worker-Tags" in str(error["message"])
    assert not neighbours.scheduler.assign_requests


async def test_preload_only_sends_the_same_hints(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    headers = {"X-Session-ID": "s1", "X-Priority": "7", "X-Worker-Tags": "gpu=h100"}
    served = await assign_for(client, neighbours, CHAT, chat(TURN_2), headers)

    response = await client.post(
        CHAT, content=orjson.dumps(chat(TURN_2)), headers={**headers, "X-Preload-Only": "true"}
    )

    assert response.status_code == 200
    preload = neighbours.scheduler.assign_requests[-1]
    assert preload is not served
    assert preload.affinity_key == "session:s1"
    assert preload.priority == 7
    assert dict(preload.required_tags) == {"gpu": "h100"}
    assert list(preload.prefix_hashes) == list(served.prefix_hashes)
    assert len(preload.prefix_hashes) == 4


async def test_hints_survive_the_retry_after_an_unavailable_assign(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.UNAVAILABLE, "restarting"))

    response = await client.post(
        CHAT, content=orjson.dumps(chat(TURN_2)), headers={"X-Session-ID": "s2"}
    )

    assert response.status_code == 200
    first, retry = neighbours.scheduler.assign_requests
    assert retry == first
    assert retry.affinity_key == "session:s2"
    assert len(retry.prefix_hashes) == 4
