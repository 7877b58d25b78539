"""The Anthropic routes against fake neighbours: translation on the wire, every prefix, errors in
Anthropic's shape (and as the `anthropic` SDK's own exceptions), streaming over real HTTP, and
cancellation when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import grpc
import httpx
import orjson
import pytest

from modelrunner.v1 import common_pb2, worker_pb2
from tests.unit.gateway.conftest import Neighbours
from tests.unit.gateway.fakes import answer, chunk, fail, head

SSE = "text/event-stream"
WAIT = 5.0
BODY: dict[str, Any] = {
    "model": "ai/smollm2",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hi"}],
}
COMPLETION = {
    "object": "chat.completion",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 31, "completion_tokens": 3, "total_tokens": 34},
}
PREFIXES = ["/anthropic/v1", "/engines/llama.cpp/v1", "/engines/v1", "/v1"]


def sse(*payloads: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(payload) + b"\n\n" for payload in payloads)


def text_chunk(text: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


STREAM = [
    text_chunk(prompt_progress={"total": 31, "cache": 0, "processed": 0}),
    text_chunk("Hel"),
    text_chunk("lo"),
    text_chunk(finish="stop"),
    {"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 2}},
]


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for raw in data.split(b"\n\n"):
        if raw:
            event_line, data_line = raw.split(b"\n")
            parsed.append(
                (
                    event_line.removeprefix(b"event: ").decode(),
                    orjson.loads(data_line.removeprefix(b"data: ")),
                )
            )
    return parsed


def sent_body(neighbours: Neighbours, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(neighbours.worker.requests[index].body)
    return body


@pytest.fixture
async def sdk(live_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=live_url + "/anthropic", api_key="unused", max_retries=0, timeout=WAIT
    ) as client:
        yield client


async def test_message_is_translated_both_ways(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, "application/json", orjson.dumps(COMPLETION)))
    response = await client.post(
        "/anthropic/v1/messages",
        json={**BODY, "system": "Be brief.", "metadata": {"user_id": "u-1"}},
        headers={"X-Request-ID": "req-1", "anthropic-version": "2023-06-01", "x-api-key": "k"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-1"
    assert response.headers["request-id"] == "req-1"
    message = response.json()
    assert message["id"].startswith("msg_")
    assert {key: value for key, value in message.items() if key != "id"} == {
        "type": "message",
        "role": "assistant",
        "model": "ai/smollm2",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 31,
            "output_tokens": 3,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    [request] = neighbours.worker.requests
    assert request.endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
    assert request.stream is False
    assert orjson.loads(request.body) == {
        "model": "ai/smollm2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 16,
        "user": "u-1",
    }
    [assign] = neighbours.scheduler.assign_requests
    assert assign.model == "ai/smollm2"
    # metadata.user_id is the affinity key; the translated chat gets prefix hashes.
    assert assign.affinity_key == "user:u-1"
    assert len(assign.prefix_hashes) == 2


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_every_prefix_serves_messages_and_count_tokens(
    client: httpx.AsyncClient, neighbours: Neighbours, prefix: str
) -> None:
    neighbours.worker.scripts.append(answer(200, "application/json", orjson.dumps(COMPLETION)))
    neighbours.worker.scripts.append(answer(200, "application/json", orjson.dumps(COMPLETION)))
    message = await client.post(prefix + "/messages", json=BODY)
    assert message.status_code == 200
    assert message.json()["type"] == "message"
    counted = await client.post(
        prefix + "/messages/count_tokens",
        json={"model": "ai/smollm2", "messages": BODY["messages"]},
    )
    assert counted.status_code == 200
    assert counted.json() == {"input_tokens": 31}


async def test_count_tokens_is_one_token_of_the_same_prompt(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, "application/json", orjson.dumps(COMPLETION)))
    response = await client.post(
        "/anthropic/v1/messages/count_tokens",
        json={"model": "ai/smollm2", "system": "Be brief.", "messages": BODY["messages"]},
    )
    assert response.json() == {"input_tokens": 31}
    body = sent_body(neighbours)
    assert body["max_tokens"] == 1
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert neighbours.worker.requests[0].stream is False


async def test_count_tokens_without_usage_is_an_api_error(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, "application/json", b'{"choices": []}'))
    response = await client.post(
        "/anthropic/v1/messages/count_tokens",
        json={"model": "ai/smollm2", "messages": BODY["messages"]},
    )
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "api_error"


def _anthropic_error(response: httpx.Response) -> dict[str, Any]:
    payload: dict[str, Any] = response.json()
    assert payload["type"] == "error"
    assert payload["request_id"] == response.headers["request-id"]
    error: dict[str, Any] = payload["error"]
    return error


async def test_invalid_bodies_are_refused_before_any_inference(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    no_max = {key: value for key, value in BODY.items() if key != "max_tokens"}
    missing = await client.post("/anthropic/v1/messages", json=no_max)
    assert missing.status_code == 400
    assert _anthropic_error(missing) == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    broken = await client.post("/anthropic/v1/messages", content=b"{not json")
    assert broken.status_code == 400
    assert _anthropic_error(broken)["type"] == "invalid_request_error"
    too_big = await client.post(
        "/anthropic/v1/messages",
        json={**BODY, "system": "x" * 5000},  # settings.max_body_bytes is 4096
    )
    assert too_big.status_code == 413
    assert _anthropic_error(too_big)["type"] == "request_too_large"
    priority = await client.post("/v1/messages", json=BODY, headers={"X-Priority": "high"})
    assert priority.status_code == 400
    assert "X-Priority" in _anthropic_error(priority)["message"]
    assert neighbours.scheduler.assign_requests == []
    assert neighbours.worker.requests == []


@pytest.mark.parametrize(
    ("failure", "status", "error_type"),
    [
        ((grpc.StatusCode.NOT_FOUND, "model ai/nope not found"), 404, "not_found_error"),
        (
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "queue-full"),
            503,
            "overloaded_error",
        ),
        ((grpc.StatusCode.DEADLINE_EXCEEDED, "load took too long"), 504, "timeout_error"),
        (
            (grpc.StatusCode.UNAVAILABLE, "not enough memory", "insufficient-memory"),
            507,
            "api_error",
        ),
    ],
)
async def test_assign_failures_keep_their_status_in_anthropics_shape(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    failure: tuple[grpc.StatusCode, str] | tuple[grpc.StatusCode, str, str],
    status: int,
    error_type: str,
) -> None:
    neighbours.scheduler.assign_errors.append(failure)
    response = await client.post("/anthropic/v1/messages", json={**BODY, "stream": True})
    assert response.status_code == status
    error = _anthropic_error(response)
    assert error["type"] == error_type
    assert failure[1] in error["message"]
    if status == 503:
        assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("status", "error_type"), [(400, "invalid_request_error"), (500, "api_error")]
)
async def test_llama_server_errors_keep_their_status_and_message(
    client: httpx.AsyncClient, neighbours: Neighbours, status: int, error_type: str
) -> None:
    llama_error = {"error": {"code": status, "message": "context size exceeded", "type": "x"}}
    neighbours.worker.scripts.append(answer(status, "application/json", orjson.dumps(llama_error)))
    response = await client.post("/anthropic/v1/messages", json=BODY)
    assert response.status_code == status
    assert _anthropic_error(response) == {"type": error_type, "message": "context size exceeded"}


async def test_images_need_a_model_with_a_projector(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    image = {
        **BODY,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                    },
                    {"type": "text", "text": "What is it?"},
                ],
            }
        ],
    }
    refused = await client.post("/anthropic/v1/messages", json=image)
    assert refused.status_code == 400
    assert "multimodal projector" in _anthropic_error(refused)["message"]
    assert neighbours.scheduler.assign_requests == []

    neighbours.registry.models[0].layers.append(
        common_pb2.Descriptor(media_type="application/vnd.docker.ai.mmproj")
    )
    neighbours.worker.scripts.append(answer(200, "application/json", orjson.dumps(COMPLETION)))
    served = await client.post("/anthropic/v1/messages", json=image)
    assert served.status_code == 200
    assert sent_body(neighbours)["messages"][0]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AA=="},
    }

    unknown = await client.post("/anthropic/v1/messages", json={**image, "model": "ai/nope"})
    assert unknown.status_code == 404
    assert _anthropic_error(unknown)["type"] == "not_found_error"


async def test_unknown_anthropic_paths_answer_in_anthropics_shape(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/anthropic/v1/messages/batches", json={})
    assert response.status_code == 404
    assert _anthropic_error(response) == {
        "type": "not_found_error",
        "message": "no such endpoint: POST /anthropic/v1/messages/batches",
    }


async def test_models_are_listed_in_anthropics_shape(client: httpx.AsyncClient) -> None:
    listed = await client.get("/anthropic/v1/models")
    assert listed.json() == {
        "data": [
            {
                "type": "model",
                "id": "ai/smollm2:latest",
                "display_name": "ai/smollm2:latest",
                "created_at": "2023-11-14T22:13:20Z",
            }
        ],
        "has_more": False,
        "first_id": "ai/smollm2:latest",
        "last_id": "ai/smollm2:latest",
    }
    one = await client.get("/anthropic/v1/models/ai/smollm2")
    assert one.json()["id"] == "ai/smollm2:latest"
    missing = await client.get("/anthropic/v1/models/ai/nope")
    assert missing.status_code == 404
    assert _anthropic_error(missing)["type"] == "not_found_error"


async def test_stream_over_real_http(live_url: str, neighbours: Neighbours) -> None:
    neighbours.worker.scripts.append(
        answer(200, SSE, sse(*STREAM[:2]), sse(*STREAM[2:]), b"data: [DONE]\n\n")
    )
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as http:
        response = await http.post(
            "/v1/messages", json={**BODY, "stream": True}, headers={"X-Request-ID": "s-1"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(SSE)
    assert response.headers["x-worker-id"] == "worker-1"
    assert response.headers["request-id"] == "s-1"
    sequence = events(response.content)
    assert [name for name, _ in sequence] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert sequence[0][1]["message"]["usage"]["input_tokens"] == 31
    assert sequence[-2][1]["usage"]["output_tokens"] == 2
    request = neighbours.worker.requests[0]
    assert request.stream is True
    assert orjson.loads(request.body)["stream_options"] == {"include_usage": True}


async def test_failure_mid_stream_is_an_error_event(live_url: str, neighbours: Neighbours) -> None:
    neighbours.worker.scripts.append(
        fail(
            grpc.StatusCode.UNAVAILABLE,
            "llama-server exited",
            head(200, SSE),
            chunk(sse(*STREAM[:2])),
        )
    )
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as http:
        response = await http.post("/anthropic/v1/messages", json={**BODY, "stream": True})
    assert response.status_code == 200
    sequence = events(response.content)
    assert [name for name, _ in sequence][:3] == ["message_start", "ping", "content_block_start"]
    name, error = sequence[-1]
    assert name == "error"
    assert error["error"]["type"] == "api_error"
    assert "llama-server exited" in error["error"]["message"]


async def test_sdk_raises_its_own_exception_classes(
    sdk: anthropic.AsyncAnthropic, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.extend(
        [
            (grpc.StatusCode.NOT_FOUND, "model ai/nope not found"),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "queue-full"),
        ]
    )
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.create(model="ai/nope", max_tokens=8, messages=BODY["messages"])
    with pytest.raises(anthropic.ServiceUnavailableError) as busy:
        await sdk.messages.create(model="ai/smollm2", max_tokens=8, messages=BODY["messages"])
    assert busy.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.BadRequestError):
        await sdk.messages.create(model="ai/smollm2", max_tokens=0, messages=BODY["messages"])

    neighbours.worker.scripts.append(answer(200, SSE, sse(*STREAM), b"data: [DONE]\n\n"))
    async with sdk.messages.stream(
        model="ai/smollm2", max_tokens=8, messages=BODY["messages"]
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (31, 2)

    neighbours.worker.scripts.append(
        fail(grpc.StatusCode.INTERNAL, "boom", head(200, SSE), chunk(sse(STREAM[1])))
    )
    with pytest.raises(anthropic.APIStatusError, match="boom"):
        async with sdk.messages.stream(
            model="ai/smollm2", max_tokens=8, messages=BODY["messages"]
        ) as failing:
            await failing.get_final_message()


async def test_client_disconnect_mid_stream_cancels_generate(
    live_url: str, neighbours: Neighbours
) -> None:
    async def endless(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(sse(STREAM[1]))
        await asyncio.sleep(WAIT * 4)
        yield chunk(sse(STREAM[2]))

    neighbours.worker.scripts.append(endless)
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as http:
        async with http.stream(
            "POST", "/anthropic/v1/messages", json={**BODY, "stream": True}
        ) as response:
            received = b""
            async for part in response.aiter_raw():
                received += part
                if b"text_delta" in received:
                    break
        # Leaving the block with the body unread closes the connection.

    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)


async def test_client_disconnect_before_the_answer_cancels_generate(
    live_url: str, neighbours: Neighbours
) -> None:
    async def slow_prefill(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        await asyncio.sleep(WAIT * 4)
        yield head(200, "application/json")

    neighbours.worker.scripts.append(slow_prefill)
    async with httpx.AsyncClient(base_url=live_url) as http:
        request = asyncio.create_task(
            http.post("/anthropic/v1/messages", json=BODY, timeout=WAIT * 4), name="client request"
        )
        deadline = asyncio.get_running_loop().time() + WAIT
        while not neighbours.worker.requests:
            assert asyncio.get_running_loop().time() < deadline, "Generate never started"
            await asyncio.sleep(0.01)
        request.cancel()  # the client gives up: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await request

    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)
