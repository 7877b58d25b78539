"""The real chain end to end: gateway -> scheduler -> worker -> llama-server with SmolLM2,
driven through the official `openai` SDK and plain HTTP. Tests run in file order: the first one
sees the model cold."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from services.stack.launcher import LocalStack

pytestmark = pytest.mark.integration

MODEL = "ai/smollm2"
DETERMINISTIC = {"temperature": 0.0, "seed": 42}


def _client(stack: LocalStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/engines/llama.cpp/v1", api_key="unused", max_retries=0
    )


async def _placements(stack: LocalStack) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
        response = await http.get("/engines/ps")
        response.raise_for_status()
        result: list[dict[str, object]] = response.json()
        return result


async def test_first_request_loads_the_model(stack: LocalStack) -> None:
    assert await _placements(stack) == []
    async with _client(stack) as client:
        reply = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=16,
            **DETERMINISTIC,
        )
    assert reply.choices[0].message.content
    placements = await _placements(stack)
    assert [p["model_name"] for p in placements] == ["ai/smollm2:latest"]


async def test_chat_non_streaming_is_deterministic(stack: LocalStack) -> None:
    async with _client(stack) as client:
        replies = [
            await client.chat.completions.create(
                model="smollm2",
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Name one colour."},
                ],
                max_tokens=24,
                **DETERMINISTIC,
            )
            for _ in range(2)
        ]
    first, second = (r.choices[0].message.content for r in replies)
    assert first and first == second
    assert replies[0].usage is not None
    assert replies[0].usage.completion_tokens > 0
    assert replies[0].object == "chat.completion"
    # The worker names the model after its reference, not its cache path.
    assert replies[0].model == "ai/smollm2:latest"


async def test_chat_streaming_passes_chunks_through(stack: LocalStack) -> None:
    async with _client(stack) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count from one to five."}],
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
            **DETERMINISTIC,
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_streamed_text_equals_non_streamed_text(stack: LocalStack) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something about the sea."}],
        "max_tokens": 20,
        **DETERMINISTIC,
    }
    async with _client(stack) as client:
        whole = await client.chat.completions.create(**request)  # type: ignore[call-overload]
        stream = await client.chat.completions.create(**request, stream=True)  # type: ignore[call-overload]
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content


async def test_legacy_completions(stack: LocalStack) -> None:
    async with _client(stack) as client:
        reply = await client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, **DETERMINISTIC
        )
        stream = await client.completions.create(
            model=MODEL, prompt="One, two,", max_tokens=8, stream=True, **DETERMINISTIC
        )
        streamed = "".join([c.choices[0].text async for c in stream if c.choices])
    assert reply.choices[0].text
    assert streamed


async def test_embeddings(stack: LocalStack) -> None:
    async with _client(stack) as client:
        reply = await client.embeddings.create(model=MODEL, input=["hello world", "goodbye"])
    assert len(reply.data) == 2
    first, second = (item.embedding for item in reply.data)
    # SmolLM2-135M's hidden size.
    assert len(first) == len(second) == 576
    assert first != second


async def test_eight_concurrent_streams_all_complete(stack: LocalStack) -> None:
    async def one(i: int) -> tuple[str, str | None]:
        async with _client(stack) as client:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Write a sentence about the number {i}."}],
                max_tokens=24,
                stream=True,
                **DETERMINISTIC,
            )
            text, finish = "", None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
            return text, finish

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), timeout=180)
    assert len(results) == 8
    for text, finish in results:
        assert text
        assert finish in {"stop", "length"}


@pytest.mark.parametrize(
    "prefix", ["/engines/llama.cpp/v1", "/engines/v1", "/v1"], ids=["llama.cpp", "engines", "v1"]
)
async def test_route_aliases_and_dmr_curl_example(stack: LocalStack, prefix: str) -> None:
    body = {
        "model": "ai/smollm2",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello, how are you?"},
        ],
        "max_tokens": 8,
    }
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as http:
        reply = await http.post(f"{prefix}/chat/completions", json=body)
        models = await http.get(f"{prefix}/models")
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    assert models.status_code == 200
    listed = models.json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["ai/smollm2:latest"]
