"""services/gateway/upstream.py against fake neighbours: SSE events parsed across any chunking,
`[DONE]`, error events, non-2xx heads as errors with llama-server's status, and the worker lease
released (and the Generate call ended) on every path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
import orjson
import pytest

from modelrunner.v1 import common_pb2, worker_pb2
from services.common.grpc_client import open_channel
from services.gateway import errors
from services.gateway.clients import SchedulerClient, WorkerChannels
from services.gateway.config import GatewaySettings
from services.gateway.inference import Inference, InferenceRequest
from services.gateway.upstream import call_json, open_events
from tests.unit.gateway.conftest import Neighbours
from tests.unit.gateway.fakes import answer, chunk, fail, head

SSE = "text/event-stream"
JSON = "application/json"
WAIT = 5.0
EVENTS: list[dict[str, Any]] = [
    {"choices": [{"delta": {"content": "caf\u00e9"}}]},
    {"choices": [{"delta": {"content": "!"}}], "n": 2},
    {"choices": [], "usage": {"completion_tokens": 2}},
]
STREAM = (
    b": comment lines are not events\n\n"
    + b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in EVENTS)
    + b"data: [DONE]\n\n"
)


@dataclass
class Upstream:
    inference: Inference
    workers: WorkerChannels
    channels: list[grpc.aio.Channel]
    worker_address: str

    async def released(self) -> bool:
        """True when no request holds the worker channel: only then does discarding it close it
        at once (a held one is closed by its last user)."""
        await self.workers.discard(self.worker_address)
        # The next request opens a fresh channel; this one is the request's just finished.
        return self.channels[-1].get_state() == grpc.ChannelConnectivity.SHUTDOWN


@pytest.fixture
async def upstream(neighbours: Neighbours, settings: GatewaySettings) -> AsyncIterator[Upstream]:
    channels: list[grpc.aio.Channel] = []

    def connect(address: str) -> grpc.aio.Channel:
        channel = open_channel(address)
        channels.append(channel)
        return channel

    scheduler_channel = open_channel(neighbours.control_address)
    workers = WorkerChannels(4, connect=connect)
    settings = replace(settings, max_response_bytes=4096)
    inference = Inference(settings, SchedulerClient(scheduler_channel, timeout=5), workers)
    try:
        yield Upstream(inference, workers, channels, neighbours.worker_address)
    finally:
        await workers.close()
        await scheduler_channel.close()


def request(stream: bool = True) -> InferenceRequest:
    return InferenceRequest(
        request_id="u-1",
        endpoint=common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS,
        model="ai/smollm2",
        stream=stream,
        body=b'{"messages": []}',
    )


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 64, len(STREAM)])
async def test_events_are_parsed_across_any_chunking(
    upstream: Upstream, neighbours: Neighbours, size: int
) -> None:
    # Size 1 splits every event, every "\n\n" and the two bytes of "é" apart.
    neighbours.worker.scripts.append(answer(200, SSE, *split(STREAM, size)))

    async with open_events(upstream.inference, request()) as answered:
        assert answered.worker_id == "worker-1"
        events = [event async for event in answered.events()]

    assert events == EVENTS
    assert await upstream.released()


async def test_last_event_without_a_blank_line_is_not_lost(
    upstream: Upstream, neighbours: Neighbours
) -> None:
    body = b"data: " + orjson.dumps(EVENTS[0]) + b"\n\ndata: " + orjson.dumps(EVENTS[1]) + b"\n"
    neighbours.worker.scripts.append(answer(200, SSE, body))

    async with open_events(upstream.inference, request()) as answered:
        events = [event async for event in answered.events()]

    assert events == EVENTS[:2]


async def test_done_ends_the_events_and_the_call(
    upstream: Upstream, neighbours: Neighbours
) -> None:
    async def endless(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(b'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"after": "done"}\n\n')
        await asyncio.sleep(WAIT * 4)
        yield chunk(b'data: {"never": 1}\n\n')

    neighbours.worker.scripts.append(endless)

    async with open_events(upstream.inference, request()) as answered:
        events = [event async for event in answered.events()]

    assert events == [{"a": 1}]
    # Leaving the block cancelled the Generate call the worker was still serving.
    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)
    assert await upstream.released()


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            b'{"error": {"code": 500, "message": "slot crashed", "type": "server_error"}}',
            "slot crashed",
        ),
        (b'{"error": "plain text failure"}', "plain text failure"),
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "not an object"),
    ],
)
async def test_error_and_malformed_events_raise_upstream_error(
    upstream: Upstream, neighbours: Neighbours, event: bytes, message: str
) -> None:
    neighbours.worker.scripts.append(
        answer(200, SSE, b'data: {"a": 1}\n\n', b"data: " + event + b"\n\n", b'data: {"b": 2}\n\n')
    )

    seen: list[dict[str, Any]] = []
    with pytest.raises(errors.UpstreamError, match=message) as raised:
        async with open_events(upstream.inference, request()) as answered:
            async for parsed in answered.events():
                seen.append(parsed)

    assert seen == [{"a": 1}]
    assert raised.value.status_code == 502
    assert await upstream.released()


async def test_failure_mid_stream_raises_upstream_error(
    upstream: Upstream, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        fail(
            grpc.StatusCode.UNAVAILABLE,
            "llama-server died",
            head(200, SSE),
            chunk(b'data: {"a": 1}\n\n'),
        )
    )

    with pytest.raises(errors.UpstreamError, match="llama-server died"):
        async with open_events(upstream.inference, request()) as answered:
            async for _ in answered.events():
                pass

    assert await upstream.released()


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            400,
            b'{"error": {"code": 400, "message": "prompt too long"}}',
            errors.InvalidRequest,
            "prompt too long",
        ),
        (404, b'{"error": "no such route"}', errors.InvalidRequest, "no such route"),
        (503, b'{"error": {"message": "loading model"}}', errors.UpstreamError, "loading model"),
        (500, b"plain text, not JSON", errors.UpstreamError, "plain text, not JSON"),
        (500, b"", errors.UpstreamError, "llama-server answered 500"),
    ],
)
async def test_non_2xx_heads_become_errors_with_llama_servers_status(
    upstream: Upstream,
    neighbours: Neighbours,
    status: int,
    body: bytes,
    kind: type[errors.GatewayError],
    message: str,
) -> None:
    for stream in (True, False):
        neighbours.worker.scripts.append(answer(status, JSON, body))
        with pytest.raises(kind) as raised:
            if stream:
                async with open_events(upstream.inference, request()):
                    pytest.fail("a non-2xx head must not open the events")
            else:
                await call_json(upstream.inference, request(stream=False))
        assert raised.value.status_code == status
        assert raised.value.message == message
        assert await upstream.released()


async def test_call_json(upstream: Upstream, neighbours: Neighbours) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, b'{"choices": ', b'[{"text": "hi"}]}'))

    assert await call_json(upstream.inference, request(stream=False)) == {
        "choices": [{"text": "hi"}]
    }
    assert await upstream.released()


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ((b"x" * 3000, b"x" * 3000), "larger than 4096 bytes"),
        ((b"[]",), "not an object"),
        ((b"{oops",), "invalid JSON"),
    ],
)
async def test_call_json_refuses_oversized_and_malformed_answers(
    upstream: Upstream, neighbours: Neighbours, chunks: tuple[bytes, ...], message: str
) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, *chunks))

    with pytest.raises(errors.UpstreamError, match=message):
        await call_json(upstream.inference, request(stream=False))

    assert await upstream.released()


async def test_lease_is_released_when_the_consumer_is_cancelled(
    upstream: Upstream, neighbours: Neighbours
) -> None:
    async def slow(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(b'data: {"a": 1}\n\n')
        await asyncio.sleep(WAIT * 4)

    neighbours.worker.scripts.append(slow)
    first = asyncio.Event()

    async def consume() -> None:
        async with open_events(upstream.inference, request()) as answered:
            async for _ in answered.events():
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)
    assert await upstream.released()


async def test_an_event_that_never_ends_is_bounded(
    upstream: Upstream, neighbours: Neighbours
) -> None:
    # The fixture's GATEWAY_MAX_RESPONSE_BYTES is 4096: an event may not grow past it.
    neighbours.worker.scripts.append(
        answer(200, SSE, b'data: {"a": 1}\n\n', b'data: {"text": "' + b"x" * 3000, b"x" * 3000)
    )

    seen: list[dict[str, Any]] = []
    with pytest.raises(errors.UpstreamError, match="larger than 4096 bytes"):
        async with open_events(upstream.inference, request()) as answered:
            async for parsed in answered.events():
                seen.append(parsed)

    assert seen == [{"a": 1}]
    assert await upstream.released()
