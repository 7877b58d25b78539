"""Ollama streams over real HTTP (uvicorn), read by the official `ollama` client: tool calls
arrive whole, lines arrive as they are produced, errors are the client's ResponseError, and a
client that goes away cancels the worker's generation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import ollama
import orjson
import pytest

from modelrunner.v1 import worker_pb2
from tests.unit.gateway.conftest import Neighbours
from tests.unit.gateway.fakes import chunk, head
from tests.unit.gateway.test_ollama_routes import SSE, USAGE, chat_stream, sse

WAIT = 5.0
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def tool_call_stream() -> list[bytes]:
    """llama-server's way: the call's arguments in fragments, a second call interleaved."""

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **fields}]}}]}

    events: list[dict[str, Any] | str] = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
        call(0, id="call_1", type="function", function={"name": "get_weather", "arguments": ""}),
        call(0, function={"arguments": '{"ci'}),
        call(1, id="call_2", type="function", function={"name": "get_weather", "arguments": "{"}),
        call(0, function={"arguments": 'ty": "Paris"}'}),
        call(1, function={"arguments": '"city": "Rome"}'}),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": USAGE},
        "[DONE]",
    ]
    # One event per chunk, some split mid-JSON, as a network would.
    data = sse(*events)
    return [data[i : i + 37] for i in range(0, len(data), 37)]


async def test_tool_calls_reach_the_ollama_client_whole(
    live_url: str, neighbours: Neighbours
) -> None:
    async def script(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        for data in tool_call_stream():
            yield chunk(data)

    neighbours.worker.scripts.append(script)
    client = ollama.AsyncClient(host=live_url, timeout=WAIT)
    try:
        parts = [
            part
            async for part in await client.chat(
                model="smollm2",
                messages=[{"role": "user", "content": "Weather in Paris and Rome?"}],
                tools=TOOLS,
                stream=True,
            )
        ]
    finally:
        await client.close()

    with_calls = [part for part in parts if part.message.tool_calls]
    assert len(with_calls) == 1
    calls = with_calls[0].message.tool_calls
    assert calls is not None
    assert [(call.function.name, dict(call.function.arguments)) for call in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert parts[-1].done is True
    assert parts[-1].done_reason == "stop"
    assert orjson.loads(neighbours.worker.requests[0].body)["tools"] == TOOLS


async def test_lines_are_sent_as_they_are_produced(live_url: str, neighbours: Neighbours) -> None:
    rest_allowed = asyncio.Event()
    stream = chat_stream("first", "second")
    first_event_end = stream.index(b"\n\n", stream.index(b"first")) + 2

    async def script(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(stream[:first_event_end])
        # Only a gateway that passed "first" on at once lets the client get here.
        await asyncio.wait_for(rest_allowed.wait(), WAIT)
        yield chunk(stream[first_event_end:])

    neighbours.worker.scripts.append(script)
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT * 2) as http:
        async with http.stream(
            "POST",
            "/api/chat",
            json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}]},
        ) as response:
            received = response.aiter_lines()
            first = orjson.loads(await anext(received))
            assert first["message"]["content"] == "first"
            rest_allowed.set()
            rest = [orjson.loads(line) async for line in received if line]

    assert [line["message"]["content"] for line in rest] == ["second", ""]
    assert rest[-1]["done"] is True


@pytest.mark.parametrize("stream", [True, False])
async def test_errors_are_the_clients_response_error(
    live_url: str, neighbours: Neighbours, stream: bool
) -> None:
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.NOT_FOUND, "model nope not found"))
    client = ollama.AsyncClient(host=live_url, timeout=WAIT)
    try:
        with pytest.raises(ollama.ResponseError) as raised:
            if stream:
                async for _ in await client.generate(model="nope", prompt="x", stream=True):
                    pass
            else:
                await client.generate(model="nope", prompt="x", stream=False)
    finally:
        await client.close()
    assert raised.value.status_code == 404
    assert raised.value.error == "model nope not found"


async def test_client_disconnect_mid_stream_cancels_generate(
    live_url: str, neighbours: Neighbours
) -> None:
    first = sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})

    async def endless(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(first)
        await asyncio.sleep(WAIT * 4)
        yield chunk(sse({"choices": [{"index": 0, "delta": {"content": "never"}}]}))

    neighbours.worker.scripts.append(endless)
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as http:
        async with http.stream(
            "POST", "/api/generate", json={"model": "smollm2", "prompt": "x"}
        ) as response:
            line = await anext(response.aiter_lines())
            assert orjson.loads(line)["response"] == "Hi"
        # Leaving the block with the body unread closes the connection.

    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)


async def test_client_disconnect_before_the_head_cancels_generate(
    live_url: str, neighbours: Neighbours
) -> None:
    async def slow_prefill(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        await asyncio.sleep(WAIT * 4)
        yield head(200, SSE)

    neighbours.worker.scripts.append(slow_prefill)
    async with httpx.AsyncClient(base_url=live_url) as http:
        request = asyncio.create_task(
            http.post(
                "/api/chat",
                json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}]},
                timeout=WAIT * 4,
            ),
            name="client request",
        )
        deadline = asyncio.get_running_loop().time() + WAIT
        while not neighbours.worker.requests:
            assert asyncio.get_running_loop().time() < deadline, "Generate never started"
            await asyncio.sleep(0.01)
        request.cancel()  # the client gives up: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await request

    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)
