"""The Responses API routes with fake neighbours: what reaches the worker, what the client gets,
the store behind retrieve/input_items/delete/previous_response_id, streaming through the official
SDK's stream helper, failures and disconnects. Also the chat route's tool_choice rewrite."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import openai
import orjson
import pytest

from modelrunner.v1 import common_pb2, worker_pb2
from services.gateway.config import GatewaySettings
from services.gateway.openai.responses import PREFIXES
from tests.unit.gateway.conftest import Neighbours, asgi_client
from tests.unit.gateway.fakes import answer, chunk, fail, head

JSON = "application/json"
SSE = "text/event-stream"
WAIT = 5.0


def completion(content: str = "Hello!", finish: str = "stop", **message: Any) -> bytes:
    return orjson.dumps(
        {
            "object": "chat.completion",
            "model": "ai/smollm2:latest",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, **message},
                    "finish_reason": finish,
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        }
    )


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + (
        b"data: [DONE]\n\n"
    )


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": fields, "finish_reason": finish}],
    }


USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}


def sent_body(neighbours: Neighbours, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(neighbours.worker.requests[index].body)
    return body


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n", 1)
        event = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


async def test_create_translates_answers_and_stores(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, completion("Hi there.")))
    reply = await client.post(
        "/v1/responses",
        json={
            "model": "ai/smollm2",
            "input": "Hello",
            "instructions": "Be brief.",
            "max_output_tokens": 5,
            "temperature": 0,
            "metadata": {"ticket": "42"},
        },
        headers={"X-Request-ID": "r-1", "X-Session-ID": "chat-7"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == "r-1"
    response = reply.json()
    assert response["id"].startswith("resp_") and response["object"] == "response"
    assert response["status"] == "completed" and response["model"] == "ai/smollm2"
    assert response["output"][0]["content"][0]["text"] == "Hi there."
    assert response["usage"]["input_tokens"] == 9 and response["usage"]["total_tokens"] == 12
    assert response["metadata"] == {"ticket": "42"} and response["instructions"] == "Be brief."

    [request] = neighbours.worker.requests
    assert request.endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
    assert request.stream is False and request.request_id == "r-1"
    assert sent_body(neighbours) == {
        "model": "ai/smollm2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        "stream": False,
        "max_tokens": 5,
        "temperature": 0.0,
    }
    [assign] = neighbours.scheduler.assign_requests
    assert assign.model == "ai/smollm2" and assign.affinity_key == "session:chat-7"
    assert len(assign.prefix_hashes) == 2  # one per chat message

    for prefix in PREFIXES:
        got = await client.get(f"{prefix}/{response['id']}")
        assert got.status_code == 200 and got.json() == response
    items = (await client.get(f"/v1/responses/{response['id']}/input_items")).json()
    assert items["object"] == "list" and items["has_more"] is False
    assert [item["content"][0]["text"] for item in items["data"]] == ["Hello"]

    deleted = await client.delete(f"/responses/{response['id']}")
    assert deleted.json() == {"id": response["id"], "object": "response.deleted", "deleted": True}
    for method, path in [
        ("GET", f"/v1/responses/{response['id']}"),
        ("GET", f"/v1/responses/{response['id']}/input_items"),
        ("DELETE", f"/v1/responses/{response['id']}"),
    ]:
        gone = await client.request(method, path)
        assert gone.status_code == 404
        assert gone.json()["error"]["type"] == "not_found_error"
        assert response["id"] in gone.json()["error"]["message"]


async def test_previous_response_id_continues_the_conversation(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.extend(
        [
            answer(200, JSON, completion("Noted, Ada.")),
            answer(200, JSON, completion("You are Ada.")),
            answer(200, JSON, completion("Yes.")),
        ]
    )
    first = (
        await client.post(
            "/v1/responses",
            json={"model": "ai/smollm2", "input": "I am Ada.", "instructions": "Old rules."},
        )
    ).json()
    second = (
        await client.post(
            "/v1/responses",
            json={"model": "ai/smollm2", "input": "Who am I?", "previous_response_id": first["id"]},
        )
    ).json()
    await client.post(
        "/v1/responses",
        json={"model": "ai/smollm2", "input": "Sure?", "previous_response_id": second["id"]},
    )
    assert second["previous_response_id"] == first["id"]
    # The instructions of earlier turns are not carried over, their messages are.
    assert sent_body(neighbours, 1)["messages"] == [
        {"role": "user", "content": "I am Ada."},
        {"role": "assistant", "content": "Noted, Ada."},
        {"role": "user", "content": "Who am I?"},
    ]
    assert [m["content"] for m in sent_body(neighbours, 2)["messages"]] == [
        "I am Ada.",
        "Noted, Ada.",
        "Who am I?",
        "You are Ada.",
        "Sure?",
    ]
    # input_items lists a response's own input only.
    items = (await client.get(f"/v1/responses/{second['id']}/input_items")).json()["data"]
    assert [item["content"][0]["text"] for item in items] == ["Who am I?"]
    # The chain keeps working after an earlier link is deleted.
    await client.delete(f"/v1/responses/{first['id']}")
    neighbours.worker.scripts.append(answer(200, JSON, completion("Still Ada.")))
    again = await client.post(
        "/v1/responses",
        json={"model": "ai/smollm2", "input": "Again?", "previous_response_id": second["id"]},
    )
    assert again.status_code == 200
    assert sent_body(neighbours)["messages"][0] == {"role": "user", "content": "I am Ada."}


async def test_a_function_call_round_trip(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'},
    }
    neighbours.worker.scripts.extend(
        [
            answer(200, JSON, completion("", "tool_calls", tool_calls=[call])),
            answer(200, JSON, completion("It is noon in Oslo.")),
        ]
    )
    tools = [
        {"type": "function", "name": name, "parameters": {"type": "object"}}
        for name in ("get_weather", "get_time")
    ]
    first = (
        await client.post(
            "/v1/responses",
            json={
                "model": "ai/smollm2",
                "input": "Time in Oslo?",
                "tools": tools,
                "tool_choice": {"type": "function", "name": "get_time"},
            },
        )
    ).json()
    sent = sent_body(neighbours)
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_time"]
    assert sent["tool_choice"] == "required"
    [item] = first["output"]
    assert item["type"] == "function_call" and item["call_id"] == "call_9"
    assert item["name"] == "get_time" and item["arguments"] == '{"city": "Oslo"}'
    assert first["tool_choice"] == {"type": "function", "name": "get_time"}

    second = await client.post(
        "/v1/responses",
        json={
            "model": "ai/smollm2",
            "previous_response_id": first["id"],
            "tools": tools,
            "input": [{"type": "function_call_output", "call_id": "call_9", "output": "noon"}],
        },
    )
    assert second.json()["output"][0]["content"][0]["text"] == "It is noon in Oslo."
    assert sent_body(neighbours)["messages"] == [
        {"role": "user", "content": "Time in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_9", "content": "noon"},
    ]


async def test_store_false_is_not_kept(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, completion()))
    response = (
        await client.post(
            "/v1/responses", json={"model": "ai/smollm2", "input": "x", "store": False}
        )
    ).json()
    assert response["store"] is False
    assert (await client.get(f"/v1/responses/{response['id']}")).status_code == 404


@dataclasses.dataclass(frozen=True)
class _SmallStore(GatewaySettings):
    # Declared here too, so the test runs whether or not GatewaySettings has the field yet.
    responses_max_stored: int = 1000


async def test_the_store_keeps_the_most_recent_responses(
    settings: GatewaySettings, neighbours: Neighbours
) -> None:
    # Shallow: asdict would turn nested settings (security) into dicts.
    fields = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}
    small = _SmallStore(**{**fields, "responses_max_stored": 2})
    ids = []
    async with asgi_client(small) as client:
        for text in ("a", "b", "c"):
            neighbours.worker.scripts.append(answer(200, JSON, completion(text)))
            reply = await client.post("/v1/responses", json={"model": "ai/smollm2", "input": text})
            ids.append(reply.json()["id"])
        found = [(await client.get(f"/v1/responses/{rid}")).status_code for rid in ids]
    assert found == [404, 200, 200]


async def test_input_items_pages(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, completion()))
    texts = ["a", "b", "c"]
    response = (
        await client.post(
            "/v1/responses",
            json={
                "model": "ai/smollm2",
                "input": [{"role": "user", "content": text} for text in texts],
            },
        )
    ).json()
    url = f"/v1/responses/{response['id']}/input_items"

    def texts_of(page: dict[str, Any]) -> list[str]:
        return [item["content"][0]["text"] for item in page["data"]]

    newest_first = (await client.get(url)).json()
    assert texts_of(newest_first) == ["c", "b", "a"]
    first = (await client.get(url, params={"order": "asc", "limit": 2})).json()
    assert texts_of(first) == ["a", "b"] and first["has_more"] is True
    rest = (await client.get(url, params={"order": "asc", "after": first["last_id"]})).json()
    assert texts_of(rest) == ["c"] and rest["has_more"] is False
    assert rest["first_id"] == rest["last_id"]
    for params in ({"limit": "0"}, {"order": "sideways"}, {"after": "msg_nope"}):
        assert (await client.get(url, params=params)).status_code == 400


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{nope", 400, None),
        (b'{"input": "hi"}', 400, "model"),
        (b'{"model": "ai/smollm2", "input": "hi", "previous_response_id": "resp_x"}', 404, None),
        (b'{"model": "ai/smollm2", "input": "hi", "tools": [{"type": "web_search"}]}', 400, None),
    ],
    ids=["malformed", "no-model", "unknown-previous", "hosted-tool"],
)
async def test_bad_requests_are_refused_before_any_assign(
    client: httpx.AsyncClient, neighbours: Neighbours, body: bytes, status: int, param: str | None
) -> None:
    reply = await client.post("/v1/responses", content=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["code"] == status
    if param is not None:
        assert error["param"] == param
    assert neighbours.scheduler.assign_requests == []


async def test_upstream_errors_keep_their_status(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        answer(400, JSON, b'{"error": {"code": 400, "message": "context too long"}}')
    )
    rejected = await client.post("/v1/responses", json={"model": "ai/smollm2", "input": "x"})
    assert rejected.status_code == 400
    assert rejected.json()["error"]["message"] == "context too long"
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.NOT_FOUND, "model nope not found"))
    missing = await client.post("/v1/responses", json={"model": "nope", "input": "x"})
    assert missing.status_code == 404


async def test_streaming_through_the_sdk_stream_helper(
    live_url: str, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        answer(
            200,
            SSE,
            sse(
                delta(role="assistant", content=None),
                delta(content="Hel"),
                delta(content="lo."),
                delta(finish="stop"),
                USAGE,
            ),
        )
    )
    async with openai.AsyncOpenAI(
        base_url=live_url + "/v1", api_key="unused", max_retries=0
    ) as client:
        async with client.responses.stream(model="ai/smollm2", input="Say hello") as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        retrieved = await client.responses.retrieve(final.id)

    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds.count("response.output_text.delta") == 2
    assert kinds[-1] == "response.completed"
    assert final.output_text == "Hello." and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 2
    assert retrieved.output_text == "Hello." and retrieved.id == final.id
    sent = sent_body(neighbours)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert neighbours.worker.requests[0].stream is True


async def test_streamed_tool_calls_assemble_in_the_sdk(
    live_url: str, neighbours: Neighbours
) -> None:
    first_delta = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_time", "arguments": ""},
    }
    neighbours.worker.scripts.append(
        answer(
            200,
            SSE,
            sse(
                delta(tool_calls=[first_delta]),
                delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
                delta(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}]),
                delta(finish="tool_calls"),
                USAGE,
            ),
        )
    )
    async with openai.AsyncOpenAI(
        base_url=live_url + "/engines/v1", api_key="unused", max_retries=0
    ) as client:
        async with client.responses.stream(
            model="ai/smollm2",
            input="Time?",
            tools=[{"type": "function", "name": "get_time", "parameters": {}, "strict": False}],
            tool_choice={"type": "function", "name": "get_time"},
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert kinds.count("response.function_call_arguments.delta") == 2
    assert "response.function_call_arguments.done" in kinds
    [call] = final.output
    assert call.type == "function_call"
    assert call.call_id == "call_1" and call.name == "get_time"
    assert orjson.loads(call.arguments) == {"city": "Oslo"}


async def test_a_failure_mid_stream_ends_with_response_failed(
    live_url: str, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        fail(
            grpc.StatusCode.UNAVAILABLE,
            "llama-server exited with signal 9",
            head(200, SSE),
            chunk(b"data: " + orjson.dumps(delta(content="Par")) + b"\n\n"),
        )
    )
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as http:
        reply = await http.post(
            "/v1/responses", json={"model": "ai/smollm2", "input": "x", "stream": True}
        )
    assert reply.status_code == 200
    events = parse_events(reply.content)
    assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
    assert "signal 9" in events[-2]["message"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["output"][0]["status"] == "incomplete"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


async def test_a_stream_refused_before_the_head_is_a_plain_http_error(
    live_url: str, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.NOT_FOUND, "model nope not found"))
    async with openai.AsyncOpenAI(
        base_url=live_url + "/v1", api_key="unused", max_retries=0
    ) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="nope", input="x", stream=True)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_unknown")


async def test_client_disconnect_mid_stream_cancels_generate(
    live_url: str, neighbours: Neighbours
) -> None:
    async def endless(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, SSE)
        yield chunk(b"data: " + orjson.dumps(delta(content="Once")) + b"\n\n")
        await asyncio.sleep(WAIT * 4)

    neighbours.worker.scripts.append(endless)
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT) as http:
        async with http.stream(
            "POST", "/v1/responses", json={"model": "ai/smollm2", "input": "x", "stream": True}
        ) as response:
            received = b""
            async for part in response.aiter_raw():
                received += part
                if b"response.output_text.delta" in received:
                    break
        # Leaving the block with the body unread closes the connection.
    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)


async def test_client_disconnect_before_a_whole_answer_cancels_generate(
    live_url: str, neighbours: Neighbours
) -> None:
    async def slow(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        await asyncio.sleep(WAIT * 4)
        yield head(200, JSON)

    neighbours.worker.scripts.append(slow)
    async with httpx.AsyncClient(base_url=live_url) as http:
        request = asyncio.create_task(
            http.post("/v1/responses", json={"model": "ai/smollm2", "input": "x"}, timeout=WAIT * 4)
        )
        deadline = asyncio.get_running_loop().time() + WAIT
        while not neighbours.worker.requests:
            assert asyncio.get_running_loop().time() < deadline, "Generate never started"
            await asyncio.sleep(0.01)
        request.cancel()  # the client gives up: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await request
    await asyncio.wait_for(neighbours.worker.cancelled.wait(), WAIT)


async def test_chat_route_rewrites_an_object_tool_choice(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("get_weather", "get_time")
    ]
    body = {
        "model": "ai/smollm2",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
    }
    reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200
    assert sent_body(neighbours) == {**body, "tools": tools[1:], "tool_choice": "required"}

    plain = orjson.dumps({**body, "tool_choice": "auto"})
    await client.post("/v1/chat/completions", content=plain)
    assert neighbours.worker.requests[-1].body == plain  # untouched bytes

    absent = await client.post(
        "/v1/chat/completions",
        json={**body, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    )
    assert absent.status_code == 400
    assert absent.json()["error"]["param"] == "tool_choice"
    assert len(neighbours.scheduler.assign_requests) == 2
