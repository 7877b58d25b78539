"""Streaming through a real uvicorn server: byte-exact, incremental, failure events, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import grpc
import httpx
import orjson

from modelrunner.v1 import worker_pb2
from services.gateway.config import GatewaySettings
from tests.unit.gateway.conftest import Neighbours, live_gateway
from tests.unit.gateway.fakes import chunk, fail, head

CHAT = "/engines/llama.cpp/v1/chat/completions"
STREAM_BODY = b'{"model": "ai/smollm2", "stream": true, "messages": []}'
SSE = "text/event-stream"
# A UTF-8 character split across chunks, a comment line and a half event: nothing may be
# re-framed or re-encoded on the way.
CHUNKS = [
    b'data: {"choices":[{"delta":{"content":"caf\xc3',
    b'\xa9"}}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"choices":[{"delta":{"content":"!"}}]}\n\ndata: [DO',
    b"NE]\n\n",
]
WAIT = 5.0


async def read_at_least(stream: AsyncIterator[bytes], size: int) -> bytes:
    received = b""
    while len(received) < size:
        received += await anext(stream)
    return received


async def test_stream_is_relayed_byte_for_byte_as_it_arrives(
    live_url: str, neighbours: Neighbours
) -> None:
    second_chunk_allowed = asyncio.Event()

    async def script(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(CHUNKS[0])
        # Only a gateway that forwarded chunk 0 at once lets the client get here.
        await asyncio.wait_for(second_chunk_allowed.wait(), WAIT)
        for data in CHUNKS[1:]:
            yield chunk(data)

    neighbours.worker.scripts.append(script)

    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT * 2) as client:
        async with client.stream(
            "POST", CHAT, content=STREAM_BODY, headers={"X-Request-ID": "s-1"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == SSE
            assert response.headers["x-request-id"] == "s-1"
            assert response.headers["x-worker-id"] == "worker-1"
            assert response.headers["cache-control"] == "no-cache"
            raw = response.aiter_raw()
            first = await read_at_least(raw, len(CHUNKS[0]))
            assert first == CHUNKS[0]
            second_chunk_allowed.set()
            rest = b"".join([part async for part in raw])

    assert first + rest == b"".join(CHUNKS)
    [request] = neighbours.worker.requests
    assert request.stream is True
    assert request.body == STREAM_BODY


async def test_failure_mid_stream_sends_one_error_event_and_ends_cleanly(
    live_url: str, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        fail(
            grpc.StatusCode.UNAVAILABLE,
            "llama-server exited with signal 9",
            head(200, SSE),
            chunk(CHUNKS[0] + CHUNKS[1]),
        )
    )

    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as client:
        response = await client.post(CHAT, content=STREAM_BODY)

    assert response.status_code == 200
    prefix = CHUNKS[0] + CHUNKS[1]
    assert response.content.startswith(prefix)
    event = response.content[len(prefix) :]
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert event.count(b"\n\n") == 1
    error = orjson.loads(event.removeprefix(b"data: "))["error"]
    assert error["type"] == "server_error"
    assert error["code"] == 502
    assert "llama-server exited with signal 9" in error["message"]
    # Failing after the head must not trigger a second attempt.
    assert len(neighbours.worker.requests) == 1


async def test_deadline_mid_stream_is_reported_as_a_timeout_event(
    neighbours: Neighbours, settings: GatewaySettings
) -> None:
    async def stall(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(CHUNKS[0])
        await asyncio.sleep(WAIT * 2)  # stands for a stalled llama-server; the deadline ends it

    neighbours.worker.scripts.append(stall)
    short = dataclasses.replace(settings, request_timeout=0.5)

    async with live_gateway(short) as url:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            response = await client.post(CHAT, content=STREAM_BODY)

    assert response.content.startswith(CHUNKS[0])
    error = orjson.loads(response.content[len(CHUNKS[0]) :].removeprefix(b"data: "))["error"]
    assert error["code"] == 504


async def test_client_disconnect_mid_stream_cancels_generate(
    live_url: str, neighbours: Neighbours
) -> None:
    async def endless(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(CHUNKS[0])
        await asyncio.sleep(WAIT * 4)
        yield chunk(b"data: never sent\n\n")

    neighbours.worker.scripts.append(endless)

    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as client:
        async with client.stream("POST", CHAT, content=STREAM_BODY) as response:
            assert await read_at_least(response.aiter_raw(), len(CHUNKS[0])) == CHUNKS[0]
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

    async with httpx.AsyncClient(base_url=live_url) as client:
        request = asyncio.create_task(
            client.post(CHAT, content=STREAM_BODY, timeout=WAIT * 4), name="client request"
        )
        deadline = asyncio.get_running_loop().time() + WAIT
        while not neighbours.worker.requests:
            assert asyncio.get_running_loop().time() < deadline, "Generate never started"
            await asyncio.sleep(0.01)
        request.cancel()  # the client gives up: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await request

    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)


async def test_non_stream_request_over_real_http(live_url: str, neighbours: Neighbours) -> None:
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as client:
        response = await client.post("/v1/chat/completions", content=b'{"model": "smollm2"}')

    assert response.status_code == 200
    assert response.json() == {"object": "chat.completion"}
    assert response.headers["content-length"] == str(len(response.content))
