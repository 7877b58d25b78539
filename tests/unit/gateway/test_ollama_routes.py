"""The Ollama routes against fake neighbours: shapes, what reaches the worker and the scheduler,
and errors in Ollama's `{"error": ...}` shape with their statuses."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import orjson
import pytest

from modelrunner.v1 import common_pb2, registry_pb2, scheduler_pb2
from services.gateway.ollama.routes import OLLAMA_API_VERSION
from services.gateway.ollama.views import MMPROJ_MEDIA_TYPE
from tests.unit.gateway.conftest import Neighbours
from tests.unit.gateway.fakes import MODEL_ID, answer, chunk, fail, head, smollm2

SSE = "text/event-stream"
JSON = "application/json"
NDJSON = "application/x-ndjson"
MODEL_HEX = MODEL_ID.removeprefix("sha256:")
USAGE = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
TIMINGS = {"prompt_n": 12, "prompt_ms": 30.0, "predicted_n": 2, "predicted_ms": 20.0}


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (event.encode() if isinstance(event, str) else orjson.dumps(event)) + b"\n\n"
        for event in events
    )


def chat_stream(*pieces: str, finish: str = "stop") -> bytes:
    events: list[dict[str, Any] | str] = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]}
    ]
    events += [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    events.append({"choices": [], "usage": USAGE, "timings": TIMINGS})
    events.append("[DONE]")
    return sse(*events)


def chat_answer(content: str, **message: Any) -> bytes:
    return orjson.dumps(
        {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content, **message},
                }
            ],
            "usage": USAGE,
            "timings": TIMINGS,
        }
    )


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in response.text.splitlines() if line.strip()]


def sent_body(neighbours: Neighbours, number: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(neighbours.worker.requests[number].body)
    return body


async def test_version(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/version")
    assert response.status_code == 200
    assert response.json() == {"version": OLLAMA_API_VERSION}


async def test_tags_one_entry_per_tag(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    model = neighbours.registry.models[0]
    model.tags.append("team/small:v1")
    model.layers.extend(
        [
            common_pb2.Descriptor(media_type="application/vnd.docker.ai.gguf.v3", size=1000),
            common_pb2.Descriptor(media_type="application/vnd.docker.ai.license", size=24),
        ]
    )

    response = await client.get("/api/tags")

    assert response.status_code == 200
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
    }
    entry = {
        "modified_at": "2023-11-14T22:13:20.000000Z",
        "size": 1024,
        "digest": MODEL_HEX,
        "details": details,
    }
    assert response.json() == {
        "models": [
            {"name": "ai/smollm2:latest", "model": "ai/smollm2:latest", **entry},
            {"name": "team/small:v1", "model": "team/small:v1", **entry},
        ]
    }


async def test_show(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    gguf = neighbours.registry.models[0].config.gguf
    gguf["tokenizer.chat_template"] = "{% for message in messages %}{{ tools }}{% endfor %}"
    gguf["llama.rope.freq_base"] = "100000.000000"
    gguf["general.name"] = "SmolLM2 135M"
    gguf["tokenizer.ggml.add_bos_token"] = "false"

    response = await client.post("/api/show", json={"model": "smollm2"})

    assert response.status_code == 200
    shown = response.json()
    assert shown["model_info"] == {
        "general.architecture": "llama",
        "general.name": "SmolLM2 135M",
        "llama.context_length": 8192,
        "llama.rope.freq_base": 100000.0,
        "tokenizer.ggml.add_bos_token": False,
    }
    assert shown["template"] == gguf["tokenizer.chat_template"]
    assert shown["details"]["family"] == "llama"
    assert shown["capabilities"] == ["completion", "tools"]
    assert shown["parameters"] == "num_ctx 8192"
    assert "FROM smollm2" in shown["modelfile"]
    assert 'TEMPLATE """{% for message' in shown["modelfile"]


async def test_show_errors(client: httpx.AsyncClient) -> None:
    missing = await client.post("/api/show", json={"model": "nope"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "model nope not found"}

    no_model = await client.post("/api/show", json={})
    assert no_model.status_code == 400
    assert no_model.json() == {"error": "model is required"}


async def test_ps(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    def placement(state: int, tags: dict[str, str], expires_ms: int) -> scheduler_pb2.Placement:
        return scheduler_pb2.Placement(
            worker_id="w",
            runner=common_pb2.RunnerInfo(
                model_id=MODEL_ID,
                reference="ai/smollm2:latest",
                state=state,  # type: ignore[arg-type]
                memory_bytes=5000,
                context_size=4096,
            ),
            expires_ms=expires_ms,
            worker_tags=tags,
        )

    neighbours.scheduler.placements = [
        placement(common_pb2.RUNNER_STATE_READY, {"accelerator": "cpu"}, 1_700_000_300_000),
        placement(common_pb2.RUNNER_STATE_STARTING, {"accelerator": "nvidia"}, 0),
        placement(common_pb2.RUNNER_STATE_FAILED, {}, 0),
    ]

    response = await client.get("/api/ps")

    assert response.status_code == 200
    cpu, gpu = response.json()["models"]
    assert cpu == {
        "name": "ai/smollm2:latest",
        "model": "ai/smollm2:latest",
        "size": 5000,
        "digest": MODEL_HEX,
        "details": cpu["details"],
        "expires_at": "2023-11-14T22:18:20.000000Z",
        "size_vram": 0,
        "context_length": 4096,
    }
    assert cpu["details"]["quantization_level"] == "Q4_1"
    assert gpu["size_vram"] == 5000
    # Kept loaded forever.
    assert gpu["expires_at"].startswith("9999-")


async def test_chat_streams_ndjson_by_default(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, SSE, chat_stream("Hel", "lo")))

    response = await client.post(
        "/api/chat",
        json={
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "options": {"temperature": 0, "num_predict": 2},
            "keep_alive": "10m",
        },
        headers={"X-Request-ID": "o-1"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == NDJSON
    assert response.headers["x-request-id"] == "o-1"
    assert response.headers["x-worker-id"] == "worker-1"
    objects = lines(response)
    assert [o["message"]["content"] for o in objects] == ["Hel", "lo", ""]
    assert [o["done"] for o in objects] == [False, False, True]
    final = objects[-1]
    assert final["done_reason"] == "stop"
    assert final["model"] == "smollm2"
    assert (final["prompt_eval_count"], final["eval_count"]) == (12, 2)
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (30_000_000, 20_000_000)
    assert final["total_duration"] >= final["load_duration"] >= 0

    [request] = neighbours.worker.requests
    assert request.endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
    assert request.stream is True
    body = sent_body(neighbours)
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert (body["temperature"], body["max_tokens"]) == (0.0, 2)
    assert body["stream_options"] == {"include_usage": True}
    [assign] = neighbours.scheduler.assign_requests
    assert assign.model == "smollm2"
    assert assign.keep_alive_seconds == 600.0
    # Routing hints work here too: one prefix hash per message.
    assert len(assign.prefix_hashes) == 1


async def test_chat_without_stream(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, chat_answer("Hello!")))

    response = await client.post(
        "/api/chat",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "stream": False},
    )

    assert response.status_code == 200
    result = response.json()
    assert result["message"] == {"role": "assistant", "content": "Hello!"}
    assert result["done"] is True
    assert result["eval_count"] == 2
    assert neighbours.worker.requests[0].stream is False
    assert not neighbours.scheduler.assign_requests[0].HasField("keep_alive_seconds")


async def test_generate_raw_is_a_completion(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    text = sse(
        {"choices": [{"index": 0, "text": " upon", "finish_reason": None}]},
        {"choices": [{"index": 0, "text": "", "finish_reason": "length"}], "usage": USAGE},
        "[DONE]",
    )
    neighbours.worker.scripts.append(answer(200, SSE, text))

    response = await client.post(
        "/api/generate", json={"model": "smollm2", "prompt": "Once", "raw": True}
    )

    assert response.status_code == 200
    objects = lines(response)
    assert [o["response"] for o in objects] == [" upon", ""]
    assert objects[-1]["done_reason"] == "length"
    assert neighbours.worker.requests[0].endpoint == common_pb2.ENDPOINT_KIND_COMPLETIONS
    assert sent_body(neighbours)["prompt"] == "Once"


async def test_generate_with_system_prompt(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, chat_answer('{"a": 1}')))

    response = await client.post(
        "/api/generate",
        json={
            "model": "smollm2",
            "prompt": "Give JSON",
            "system": "Be terse.",
            "format": "json",
            "stream": False,
        },
    )

    assert response.status_code == 200
    assert response.json()["response"] == '{"a": 1}'
    body = sent_body(neighbours)
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("stream", [True, False])
async def test_unknown_model_is_404_in_ollamas_shape(
    client: httpx.AsyncClient, neighbours: Neighbours, stream: bool
) -> None:
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.NOT_FOUND, "model nope not found"))

    response = await client.post(
        "/api/chat",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}], "stream": stream},
    )

    assert response.status_code == 404
    assert response.json() == {"error": "model nope not found"}


async def test_llama_server_error_keeps_its_status_and_message(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    error = {"error": {"code": 400, "message": "the prompt is too long", "type": "x"}}
    neighbours.worker.scripts.append(answer(400, JSON, orjson.dumps(error)))

    response = await client.post("/api/generate", json={"model": "smollm2", "prompt": "long"})

    assert response.status_code == 400
    assert response.json() == {"error": "the prompt is too long"}


async def test_failure_mid_stream_ends_with_an_error_line(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        fail(
            grpc.StatusCode.UNAVAILABLE,
            "llama-server crashed",
            head(200, SSE),
            chunk(sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})),
        )
    )

    response = await client.post(
        "/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}]}
    )

    assert response.status_code == 200
    objects = lines(response)
    assert objects[0]["message"]["content"] == "Hi"
    assert objects[-1] == {"error": "worker failed: llama-server crashed"}
    assert len(objects) == 2


async def test_stream_that_stops_before_the_end_is_an_error_line(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(
        answer(200, SSE, sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}))
    )

    response = await client.post(
        "/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}]}
    )

    assert lines(response)[-1] == {"error": "llama-server's answer ended before it was complete"}


async def test_empty_chat_loads_the_model(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.post("/api/chat", json={"model": "smollm2", "keep_alive": -1})

    assert response.status_code == 200
    result = response.json()
    assert result["done"] is True
    assert result["done_reason"] == "load"
    assert result["message"] == {"role": "assistant", "content": ""}
    [assign] = neighbours.scheduler.assign_requests
    assert assign.keep_alive_seconds == -1.0
    # Loaded, nothing generated, the lease handed straight back.
    assert not neighbours.worker.requests
    assert [release.lease_id for release in neighbours.scheduler.releases] == ["lease-1"]


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
async def test_empty_request_with_keep_alive_zero_unloads(
    client: httpx.AsyncClient, neighbours: Neighbours, route: str
) -> None:
    response = await client.post(route, json={"model": "smollm2", "keep_alive": 0})

    assert response.status_code == 200
    assert response.json()["done_reason"] == "unload"
    [unload] = neighbours.scheduler.unload_requests
    assert (unload.all, list(unload.models)) == (False, ["smollm2"])
    assert not neighbours.scheduler.assign_requests

    missing = await client.post(route, json={"model": "nope", "keep_alive": "0s"})
    assert missing.status_code == 404
    assert len(neighbours.scheduler.unload_requests) == 1


async def test_images_need_a_projector(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    image = "iVBORw0KGgoAAAANSUhEUg=="
    request = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is it?", "images": [image]}],
        "stream": False,
    }

    refused = await client.post("/api/chat", json=request)
    assert refused.status_code == 400
    assert "does not support images" in refused.json()["error"]
    assert not neighbours.worker.requests

    neighbours.registry.models[0].layers.append(
        common_pb2.Descriptor(media_type=MMPROJ_MEDIA_TYPE, size=10)
    )
    neighbours.worker.scripts.append(answer(200, JSON, chat_answer("A cat.")))
    served = await client.post("/api/chat", json=request)
    assert served.status_code == 200
    [_, picture] = sent_body(neighbours)["messages"][0]["content"]
    assert picture["image_url"]["url"] == f"data:image/png;base64,{image}"


def embeddings_answer(*vectors: list[float]) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    # Answered out of order: the index decides.
    return orjson.dumps(
        {"object": "list", "data": data[::-1], "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    )


async def test_embed(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.worker.scripts.append(
        answer(200, JSON, embeddings_answer([0.6, 0.8, 0.0], [1, 0, 0]))
    )

    response = await client.post(
        "/api/embed", json={"model": "smollm2", "input": ["a", "b"], "keep_alive": "1m"}
    )

    assert response.status_code == 200
    result = response.json()
    assert result["embeddings"] == [[0.6, 0.8, 0.0], [1, 0, 0]]
    assert result["prompt_eval_count"] == 4
    assert result["model"] == "smollm2"
    [request] = neighbours.worker.requests
    assert request.endpoint == common_pb2.ENDPOINT_KIND_EMBEDDINGS
    assert sent_body(neighbours)["input"] == ["a", "b"]
    assert neighbours.scheduler.assign_requests[0].keep_alive_seconds == 60.0


async def test_embed_dimensions_shorten_and_renormalise(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, embeddings_answer([0.3, 0.4, 0.866])))

    response = await client.post(
        "/api/embed", json={"model": "smollm2", "input": "a", "dimensions": 2}
    )

    assert response.json()["embeddings"] == [[pytest.approx(0.6), pytest.approx(0.8)]]


async def test_legacy_embeddings(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.worker.scripts.append(answer(200, JSON, embeddings_answer([0.1, 0.2])))

    response = await client.post("/api/embeddings", json={"model": "smollm2", "prompt": "a"})

    assert response.json() == {"embedding": [0.1, 0.2]}
    assert sent_body(neighbours)["input"] == ["a"]

    empty = await client.post("/api/embeddings", json={"model": "smollm2", "prompt": ""})
    assert empty.json() == {"embedding": []}
    # Loaded, not computed.
    assert len(neighbours.worker.requests) == 1
    assert len(neighbours.scheduler.assign_requests) == 2


def progress(layer: str, size: int, current: int) -> registry_pb2.TransferProgress:
    return registry_pb2.TransferProgress(
        type=registry_pb2.TRANSFER_EVENT_TYPE_PROGRESS,
        total=size,
        mode="pull",
        layer=registry_pb2.LayerProgress(id=layer, size=size, current=current),
    )


LAYER = "sha256:" + "5e" * 32
SUCCESS = registry_pb2.TransferProgress(
    type=registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS, message="Model pulled successfully"
)


async def test_pull_streams_ollama_progress(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.transfer_events = [
        progress(LAYER, 100, 40),
        progress(LAYER, 100, 100),
        SUCCESS,
    ]

    response = await client.post(
        "/api/pull",
        json={"model": "registry.local/team/m:v1"},
        headers={"Authorization": "Bearer t"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == NDJSON
    assert lines(response) == [
        {"status": "pulling manifest"},
        {"status": "pulling 5e5e5e5e5e5e", "digest": LAYER, "total": 100, "completed": 40},
        {"status": "pulling 5e5e5e5e5e5e", "digest": LAYER, "total": 100, "completed": 100},
        {"status": "success"},
    ]
    [pull] = neighbours.registry.transfer_requests
    assert pull.reference == "registry.local/team/m:v1"
    assert pull.credentials.bearer_token == "t"


async def test_pull_without_stream_and_its_errors(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.transfer_events = [progress(LAYER, 100, 100), SUCCESS]
    done = await client.post("/api/pull", json={"model": "team/m", "stream": False})
    assert (done.status_code, done.json()) == (200, {"status": "success"})

    # Before the first message: a real status, streaming or not.
    neighbours.registry.transfer_events = []
    neighbours.registry.transfer_failure = (grpc.StatusCode.NOT_FOUND, "manifest unknown")
    missing = await client.post("/api/pull", json={"model": "team/none"})
    assert (missing.status_code, missing.json()) == (404, {"error": "manifest unknown"})

    # After it: an ERROR message is the status it names when not streaming, a line otherwise.
    neighbours.registry.transfer_failure = None
    neighbours.registry.transfer_events = [
        progress(LAYER, 100, 10),
        registry_pb2.TransferProgress(
            type=registry_pb2.TRANSFER_EVENT_TYPE_ERROR,
            message="digest mismatch",
            error_code="DATA_LOSS",
        ),
    ]
    failed = await client.post("/api/pull", json={"model": "team/m", "stream": False})
    assert (failed.status_code, failed.json()) == (502, {"error": "digest mismatch"})
    streamed = await client.post("/api/pull", json={"model": "team/m"})
    assert streamed.status_code == 200
    assert lines(streamed)[-1] == {"error": "digest mismatch"}


async def test_push_streams_progress(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.registry.transfer_events = [progress(LAYER, 10, 10), SUCCESS]

    response = await client.post("/api/push", json={"model": "registry.local/team/m:v1"})

    assert [line["status"] for line in lines(response)] == [
        "retrieving manifest",
        "pushing 5e5e5e5e5e5e",
        "success",
    ]


async def test_copy(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    response = await client.post(
        "/api/copy", json={"source": "smollm2", "destination": "smollm2-backup"}
    )
    assert response.status_code == 200
    [tag] = neighbours.registry.tag_requests
    assert (tag.source, tag.target) == ("smollm2", "smollm2-backup")

    missing = await client.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "model nope not found"}

    bad = await client.post("/api/copy", json={"source": "smollm2"})
    assert bad.status_code == 400
    assert "destination" in bad.json()["error"]


async def test_delete(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.registry.models.append(smollm2("team/other:v1"))
    neighbours.registry.models[-1].id = "sha256:" + "cd" * 32

    response = await client.request("DELETE", "/api/delete", json={"model": "team/other:v1"})

    assert response.status_code == 200
    assert neighbours.registry.delete_requests[0].force is False
    # The model went with its last tag, so its runners are unloaded too.
    [unload] = neighbours.scheduler.unload_requests
    assert list(unload.models) == ["sha256:" + "cd" * 32]

    missing = await client.request("DELETE", "/api/delete", json={"model": "team/other:v1"})
    assert missing.status_code == 404
    assert "not found" in missing.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/chat", b"{not json", 400),
        ("POST", "/api/chat", b'{"messages": []}', 400),
        ("POST", "/api/chat", b'{"model": "m", "messages": [{"content": "no role"}]}', 400),
        ("POST", "/api/chat", b'{"model": "m", "keep_alive": "soon"}', 400),
        ("POST", "/api/generate", b'{"model": "m", "prompt": "p", "options": {"top_k": "x"}}', 400),
        ("POST", "/api/generate", b'{"model": "m", "prompt": "p", "template": "{{.P}}"}', 400),
        ("POST", "/api/embed", b'{"model": "m", "input": "x", "dimensions": 0}', 400),
        (
            "POST",
            "/api/chat",
            b'{"model": "m", "messages": [], "padding": "' + b"x" * 5000 + b'"}',
            413,
        ),
        ("POST", "/api/create", b'{"model": "m"}', 501),
        ("GET", "/api/nothing-here", b"", 404),
    ],
)
async def test_errors_in_ollamas_shape(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    method: str,
    path: str,
    body: bytes,
    status: int,
) -> None:
    response = await client.request(method, path, content=body)

    assert response.status_code == status
    error = response.json()
    assert list(error) == ["error"]
    assert isinstance(error["error"], str)
    assert not neighbours.worker.requests


async def test_bad_routing_header_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/chat",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers={"X-Priority": "urgent"},
    )
    assert response.status_code == 400
    assert "X-Priority" in response.json()["error"]


async def test_full_queue_is_503_with_retry_after(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.assign_errors.append(
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "queue-full")
    )
    response = await client.post(
        "/api/generate", json={"model": "smollm2", "prompt": "x", "stream": False}
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"error": "queue full"}
