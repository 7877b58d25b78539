"""The inference hot path through the real app (ASGI): passthrough, routing, and every error."""

from __future__ import annotations

import dataclasses

import grpc
import httpx
import pytest

from modelrunner.v1 import common_pb2
from services.gateway.config import GatewaySettings
from tests.support.processes import free_port
from tests.unit.gateway.conftest import Neighbours, asgi_client
from tests.unit.gateway.fakes import MODEL_ID, answer, chunk, fail, head

CHAT = "/engines/llama.cpp/v1/chat/completions"
# Odd spacing, key order and an unknown field: the worker must get exactly these bytes.
BODY = (
    b'{ "model":"ai/smollm2",  "messages":[{"role":"user","content":"h\\u00e9"}],'
    b'"grammar":"root ::= \\"x\\"", "n_probs": 3 }'
)


def error_of(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == response.status_code
    return dict(error)


async def test_non_stream_answer_is_the_workers_bytes(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        answer(200, "application/json", b'{"id":"c1",', b'"object":"chat.completion"}')
    )

    response = await client.post(CHAT, content=BODY, headers={"X-Request-ID": "req-42"})

    assert response.status_code == 200
    assert response.content == b'{"id":"c1","object":"chat.completion"}'
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "req-42"
    [assign] = neighbours.scheduler.assign_requests
    assert assign.model == "ai/smollm2"
    assert assign.request_id == "req-42"
    assert assign.endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
    [generate] = neighbours.worker.requests
    assert generate.body == BODY
    assert generate.request_id == "req-42"
    assert generate.lease_id == "lease-1"
    assert generate.model_id == MODEL_ID
    assert generate.stream is False
    assert generate.endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS


async def test_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, content=BODY)
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    int(request_id, 16)


async def test_deadlines_are_passed_to_assign_and_generate(
    client: httpx.AsyncClient, neighbours: Neighbours, settings: GatewaySettings
) -> None:
    await client.post(CHAT, content=BODY)

    [assign_remaining] = neighbours.scheduler.assign_time_remaining
    [generate_remaining] = neighbours.worker.time_remaining
    # gRPC rounds the encoded timeout up a little; the slack only absorbs that.
    slack = 0.5
    assert assign_remaining is not None
    assert 0 < assign_remaining <= settings.assign_timeout + slack
    assert generate_remaining is not None
    assert settings.assign_timeout + slack < generate_remaining <= settings.request_timeout + slack


@pytest.mark.parametrize("prefix", ["/engines/llama.cpp/v1", "/engines/v1", "/v1"])
@pytest.mark.parametrize(
    ("suffix", "endpoint"),
    [
        ("/chat/completions", common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS),
        ("/completions", common_pb2.ENDPOINT_KIND_COMPLETIONS),
        ("/embeddings", common_pb2.ENDPOINT_KIND_EMBEDDINGS),
    ],
)
async def test_route_aliases_reach_the_same_endpoint(
    client: httpx.AsyncClient, neighbours: Neighbours, prefix: str, suffix: str, endpoint: int
) -> None:
    response = await client.post(prefix + suffix, content=BODY)

    assert response.status_code == 200
    assert neighbours.scheduler.assign_requests[0].endpoint == endpoint
    assert neighbours.worker.requests[0].endpoint == endpoint


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/engines/vllm/v1/chat/completions"),
        ("POST", "/engines/mlx/v1/embeddings"),
        ("GET", "/engines/sglang/v1/models"),
    ],
)
async def test_unknown_backend_is_404(
    client: httpx.AsyncClient, neighbours: Neighbours, method: str, path: str
) -> None:
    response = await client.request(method, path, content=BODY)

    assert response.status_code == 404
    error = error_of(response)
    assert "backend not found" in str(error["message"])
    assert not neighbours.scheduler.assign_requests


async def test_unknown_llama_cpp_endpoint_is_a_plain_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/engines/llama.cpp/v1/nonsense", content=BODY)

    assert response.status_code == 404
    assert "backend not found" not in str(error_of(response)["message"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "ai/smollm2", ', "not valid JSON"),
        (b"", "empty"),
        (b'["ai/smollm2"]', "JSON object"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": 7}', "model is required"),
        (b'{"model": "  "}', "model is required"),
        (b'{"model": "ai/smollm2", "stream": "yes"}', "stream must be a boolean"),
    ],
)
async def test_bad_bodies_are_400_without_an_assign(
    client: httpx.AsyncClient, neighbours: Neighbours, body: bytes, message: str
) -> None:
    response = await client.post(CHAT, content=body, headers={"X-Request-ID": "bad-1"})

    assert response.status_code == 400
    error = error_of(response)
    assert message in str(error["message"])
    assert error["type"] == "invalid_request_error"
    assert response.headers["x-request-id"] == "bad-1"
    assert not neighbours.scheduler.assign_requests


async def test_body_over_the_limit_is_413(
    client: httpx.AsyncClient, neighbours: Neighbours, settings: GatewaySettings
) -> None:
    big = b'{"model": "ai/smollm2", "prompt": "' + b"x" * settings.max_body_bytes + b'"}'

    declared = await client.post(CHAT, content=big)

    async def chunked() -> object:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    undeclared = await client.post(CHAT, content=chunked())  # type: ignore[arg-type]

    for response in (declared, undeclared):
        assert response.status_code == 413
        assert "larger than" in str(error_of(response)["message"])
    assert not neighbours.scheduler.assign_requests


@pytest.mark.parametrize(
    ("code", "status", "error_type"),
    [
        (grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "server_error"),
        (grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"),
        (grpc.StatusCode.INTERNAL, 502, "server_error"),
    ],
)
async def test_assign_failures_map_to_http(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    code: grpc.StatusCode,
    status: int,
    error_type: str,
) -> None:
    neighbours.scheduler.assign_errors.append((code, "scheduler says no"))

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == status
    error = error_of(response)
    assert error["type"] == error_type
    assert "scheduler says no" in str(error["message"])
    assert len(neighbours.scheduler.assign_requests) == 1
    assert not neighbours.worker.requests


async def test_unknown_model_is_404_model_not_found(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.NOT_FOUND, ""))

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 404
    assert error_of(response)["message"] == "model not found"


async def test_no_worker_is_503_after_one_retry(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    for _ in range(2):
        neighbours.scheduler.assign_errors.append(
            (grpc.StatusCode.UNAVAILABLE, "no worker can fit ai/smollm2")
        )

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 503
    assert "no worker can fit" in str(error_of(response)["message"])
    assert len(neighbours.scheduler.assign_requests) == 2


async def test_assign_unavailable_once_then_served(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.UNAVAILABLE, "restarting"))

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 200
    assert len(neighbours.scheduler.assign_requests) == 2


async def test_full_queue_is_503_with_retry_after_and_no_retry(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert len(neighbours.scheduler.assign_requests) == 1


async def test_worker_unavailable_before_head_is_retried_once_then_succeeds(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.extend(
        [
            fail(grpc.StatusCode.UNAVAILABLE, "llama-server exited"),
            answer(200, "application/json", b'{"ok":true}'),
        ]
    )

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 200
    assert response.content == b'{"ok":true}'
    assert len(neighbours.scheduler.assign_requests) == 2
    assert [request.lease_id for request in neighbours.worker.requests] == ["lease-1", "lease-2"]
    # The worker was reachable, so it released the lease itself; the gateway did not.
    assert not neighbours.scheduler.releases


async def test_worker_unavailable_twice_is_502(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.extend(
        [
            fail(grpc.StatusCode.UNAVAILABLE, "llama-server exited"),
            fail(grpc.StatusCode.UNAVAILABLE, "llama-server exited again"),
        ]
    )

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 502
    error = error_of(response)
    assert "llama-server exited again" in str(error["message"])
    assert error["type"] == "server_error"
    assert len(neighbours.worker.requests) == 2


async def test_unreachable_worker_lease_is_released_and_request_rerouted(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.addresses.append(f"127.0.0.1:{free_port()}")

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 200
    [release] = neighbours.scheduler.releases
    assert release.lease_id == "lease-1"
    assert release.runner_failed is True
    assert [request.lease_id for request in neighbours.worker.requests] == ["lease-2"]


async def test_error_head_is_passed_through_even_for_streams(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    llama_error = b'{"error":{"code":400,"message":"the request exceeds the context","type":"exceed_context_size_error"}}'
    neighbours.worker.scripts.append(answer(400, "application/json; charset=utf-8", llama_error))

    response = await client.post(CHAT, content=b'{"model": "ai/smollm2", "stream": true}')

    assert response.status_code == 400
    assert response.content == llama_error
    assert response.headers["content-type"] == "application/json; charset=utf-8"


async def test_failure_after_head_of_a_non_stream_answer_is_502(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        fail(grpc.StatusCode.UNAVAILABLE, "llama-server died", head(), chunk(b'{"partial":'))
    )

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 502
    assert "llama-server died" in str(error_of(response)["message"])
    # The head had arrived: the request reached llama-server, so it is not retried.
    assert len(neighbours.scheduler.assign_requests) == 1


async def test_stream_without_head_is_502(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    async def headless(request: object, context: object) -> object:
        yield chunk(b"data: {}\n\n")

    neighbours.worker.scripts.append(headless)  # type: ignore[arg-type]

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 502
    assert "without a response head" in str(error_of(response)["message"])


async def test_non_stream_answer_over_the_response_limit_is_502(
    neighbours: Neighbours, settings: GatewaySettings
) -> None:
    neighbours.worker.scripts.append(answer(200, "application/json", b"x" * 600, b"y" * 600))

    async with asgi_client(dataclasses.replace(settings, max_response_bytes=1000)) as client:
        response = await client.post(CHAT, content=BODY)

    assert response.status_code == 502
    assert "GATEWAY_MAX_RESPONSE_BYTES" in str(error_of(response)["message"])


async def test_scheduler_down_is_503(settings: GatewaySettings) -> None:
    down = f"127.0.0.1:{free_port()}"
    async with asgi_client(dataclasses.replace(settings, scheduler_address=down)) as client:
        response = await client.post(CHAT, content=BODY)

    assert response.status_code == 503
    assert "scheduler unavailable" in str(error_of(response)["message"])


async def test_request_id_header_with_control_characters_is_replaced(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.post(CHAT, content=BODY, headers={"X-Request-ID": "a" * 500})

    assert response.headers["x-request-id"] != "a" * 500
    assert neighbours.worker.requests[0].request_id == response.headers["x-request-id"]


async def test_preload_only_loads_and_hands_the_lease_back(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.post(CHAT, content=BODY, headers={"X-Preload-Only": "true"})

    assert response.status_code == 200
    assert response.content == b""
    assert len(neighbours.scheduler.assign_requests) == 1
    [release] = neighbours.scheduler.releases
    assert (release.lease_id, release.runner_failed) == ("lease-1", False)
    assert not neighbours.worker.requests


async def test_preload_of_an_unknown_model_is_404(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.NOT_FOUND, "no such model"))

    response = await client.post(CHAT, content=BODY, headers={"X-Preload-Only": "true"})

    assert response.status_code == 404
    assert not neighbours.scheduler.releases


async def test_insufficient_memory_is_507_with_the_schedulers_message(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    message = "ai/smollm2 needs 1.2 GiB; no worker with tags {} has it free (largest: 0.5 GiB)"
    neighbours.scheduler.assign_errors.append(
        (grpc.StatusCode.RESOURCE_EXHAUSTED, message, "insufficient-memory")
    )

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 507
    error = error_of(response)
    assert error["type"] == "insufficient_storage"
    assert error["message"] == message
    assert "retry-after" not in response.headers
    assert len(neighbours.scheduler.assign_requests) == 1
    assert not neighbours.worker.requests


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ],
)
async def test_queue_full_reason_is_503_with_retry_after_and_no_retry(
    client: httpx.AsyncClient, neighbours: Neighbours, code: grpc.StatusCode
) -> None:
    neighbours.scheduler.assign_errors.append((code, "queue of ai/smollm2 is full", "queue-full"))

    response = await client.post(CHAT, content=BODY)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert error_of(response)["message"] == "queue of ai/smollm2 is full"
    assert len(neighbours.scheduler.assign_requests) == 1


async def test_preload_of_a_model_that_fits_nowhere_is_507(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.append(
        (grpc.StatusCode.UNAVAILABLE, "needs 9 GiB", "insufficient-memory")
    )

    response = await client.post(CHAT, content=BODY, headers={"X-Preload-Only": "true"})

    assert response.status_code == 507
    assert len(neighbours.scheduler.assign_requests) == 1
    assert not neighbours.scheduler.releases
