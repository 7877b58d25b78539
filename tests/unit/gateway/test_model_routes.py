"""DMR model management, OpenAI model lists and the /engines routes: JSON shapes and errors."""

from __future__ import annotations

import dataclasses

import grpc
import httpx
import pytest

from modelrunner.v1 import registry_pb2
from services.gateway.config import GatewaySettings
from tests.support.processes import free_port
from tests.unit.gateway.conftest import Neighbours, asgi_client
from tests.unit.gateway.fakes import MODEL_ID, smollm2
from tests.unit.gateway.test_inference import error_of

DMR_SMOLLM2 = {
    "id": MODEL_ID,
    "tags": ["ai/smollm2:latest"],
    "created": 1_700_000_000,
    "config": {
        "format": "gguf",
        "quantization": "Q4_1",
        "parameters": "134.52M",
        "architecture": "llama",
        "size": "86.94MiB",
        "gguf": {"general.architecture": "llama", "llama.context_length": "8192"},
        "context_size": 8192,
    },
}
OPENAI_SMOLLM2 = {
    "id": "ai/smollm2:latest",
    "object": "model",
    "created": 1_700_000_000,
    "owned_by": "docker",
    "dmr": {
        "context_window": 8192,
        "architecture": "llama",
        "parameters": "134.52M",
        "quantization": "Q4_1",
        "size": "86.94MiB",
    },
}


async def test_root_and_version(client: httpx.AsyncClient) -> None:
    root = await client.get("/")
    assert root.status_code == 200
    assert root.text == "Docker Model Runner is running"

    version = await client.get("/version")
    assert version.status_code == 200
    assert isinstance(version.json()["version"], str)


async def test_list_models_dmr_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/models")

    assert response.status_code == 200
    assert response.json() == [DMR_SMOLLM2]


@pytest.mark.parametrize("name", ["smollm2", "ai/smollm2", "ai/smollm2:latest", MODEL_ID])
async def test_inspect_model_by_any_name(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/models/{name}")

    assert response.status_code == 200
    assert response.json() == DMR_SMOLLM2


async def test_unknown_context_size_is_omitted(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    model = smollm2("ai/tiny:latest")
    model.id = "sha256:" + "cd" * 32
    model.config.context_size = 0
    neighbours.registry.models.append(model)

    dmr = (await client.get("/models/ai/tiny")).json()
    openai = (await client.get("/v1/models/ai/tiny")).json()

    assert "context_size" not in dmr["config"]
    assert "context_window" not in openai["dmr"]


async def test_inspect_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/models/ai/nope")

    assert response.status_code == 404
    assert "not found" in str(error_of(response)["message"])


@pytest.mark.parametrize("prefix", ["/engines/llama.cpp/v1", "/engines/v1", "/v1"])
async def test_openai_model_list_and_single_model(client: httpx.AsyncClient, prefix: str) -> None:
    listing = await client.get(prefix + "/models")
    single = await client.get(prefix + "/models/ai/smollm2:latest")
    missing = await client.get(prefix + "/models/ai/nope")

    assert listing.json() == {"object": "list", "data": [OPENAI_SMOLLM2]}
    assert single.json() == OPENAI_SMOLLM2
    assert missing.status_code == 404
    error_of(missing)


async def test_openai_id_falls_back_to_the_model_id_without_tags(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.models[0].ClearField("tags")

    listing = await client.get("/v1/models")

    assert listing.json()["data"][0]["id"] == MODEL_ID


async def test_delete_multi_tag_model_needs_force(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.models[0].tags.append("ai/smollm2:135m")

    refused = await client.delete("/models/ai/smollm2")
    assert refused.status_code == 409
    assert "several tags" in str(error_of(refused)["message"])

    forced = await client.delete("/models/ai/smollm2", params={"force": "true"})
    assert forced.status_code == 200
    assert forced.json() == [
        {"Untagged": "ai/smollm2:latest"},
        {"Untagged": "ai/smollm2:135m"},
        {"Deleted": MODEL_ID},
    ]
    assert [request.force for request in neighbours.registry.delete_requests] == [False, True]
    # The deleted model's runners are unloaded (only after the delete that removed it).
    assert [list(r.models) for r in neighbours.scheduler.unload_requests] == [[MODEL_ID]]


async def test_bare_force_flag_counts_as_true(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    await client.delete("/models/smollm2?force")

    assert neighbours.registry.delete_requests[0].force is True


async def test_bad_force_flag_is_400(client: httpx.AsyncClient) -> None:
    response = await client.delete("/models/smollm2", params={"force": "maybe"})

    assert response.status_code == 400
    assert error_of(response)["param"] == "force"


async def test_delete_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.delete("/models/ai/nope")

    assert response.status_code == 404


async def test_tag_model(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    response = await client.post("/models/smollm2/tag", params={"repo": "me/smol", "tag": "v2"})

    assert response.status_code == 201
    assert response.json() == {
        "message": 'Model tagged successfully with "me/smol:v2"',
        "target": "me/smol:v2",
    }
    [request] = neighbours.registry.tag_requests
    assert (request.source, request.target) == ("smollm2", "me/smol:v2")


async def test_tag_model_with_slashes_in_the_source(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.post(
        "/models/ai/smollm2:latest/tag", params={"repo": "ai/smollm2", "tag": "v3"}
    )

    assert response.status_code == 201
    assert neighbours.registry.tag_requests[0].source == "ai/smollm2:latest"


@pytest.mark.parametrize("params", [{"repo": "me/smol"}, {"tag": "v2"}, {}])
async def test_tag_needs_repo_and_tag(
    client: httpx.AsyncClient, neighbours: Neighbours, params: dict[str, str]
) -> None:
    response = await client.post("/models/smollm2/tag", params=params)

    assert response.status_code == 400
    assert not neighbours.registry.tag_requests


async def test_tag_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/models/nope/tag", params={"repo": "me/x", "tag": "v1"})

    assert response.status_code == 404


async def test_unsupported_model_actions_are_501(client: httpx.AsyncClient) -> None:
    response = await client.post("/models/ai/smollm2/repackage")

    assert response.status_code == 501
    error_of(response)


@pytest.mark.parametrize("source", ["ai/smollm2", "smollm2", "ai/smollm2:latest"])
async def test_create_of_a_stored_model_is_a_cache_hit(
    client: httpx.AsyncClient, source: str
) -> None:
    response = await client.post("/models/create", json={"from": source})

    assert response.status_code == 200
    lines = response.text.splitlines()
    assert len(lines) == 1
    assert httpx.Response(200, content=lines[0]).json() == {
        "type": "success",
        "message": "Using cached model: 86.94MiB",
    }


def _progress(current: int) -> registry_pb2.TransferProgress:
    return registry_pb2.TransferProgress(
        type=registry_pb2.TRANSFER_EVENT_TYPE_PROGRESS,
        message=f"Downloaded: {current} B",
        total=100,
        layer=registry_pb2.LayerProgress(id="sha256:" + "cd" * 32, size=100, current=current),
        mode="pull",
    )


async def test_create_of_a_missing_model_streams_the_pull(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.transfer_events = [
        _progress(40),
        _progress(100),
        registry_pb2.TransferProgress(
            type=registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS,
            message="Model pulled successfully",
            total=100,
            mode="pull",
        ),
    ]
    response = await client.post(
        "/models/create",
        json={"from": "localhost:5000/team/model:v1", "bearer-token": "secret"},
        headers={"Accept": "application/json"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    lines = [httpx.Response(200, content=line).json() for line in response.text.splitlines()]
    assert [line["type"] for line in lines] == ["progress", "progress", "success"]
    assert lines[0]["layer"] == {"id": "sha256:" + "cd" * 32, "size": 100, "current": 40}
    assert lines[0]["total"] == 100 and lines[0]["mode"] == "pull"
    (request,) = neighbours.registry.transfer_requests
    assert isinstance(request, registry_pb2.PullRequest)
    assert request.reference == "localhost:5000/team/model:v1"
    assert request.credentials.bearer_token == "secret"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 422),
        (grpc.StatusCode.UNAVAILABLE, 503),
    ],
)
async def test_pull_failing_before_progress_gets_its_status(
    client: httpx.AsyncClient, neighbours: Neighbours, code: grpc.StatusCode, status: int
) -> None:
    neighbours.registry.transfer_failure = (code, "the reason")
    response = await client.post("/models/create", json={"from": "other/model"})

    assert response.status_code == status
    assert "the reason" in str(error_of(response)["message"])


async def test_pull_failing_midway_ends_with_an_error_line(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.transfer_events = [_progress(40)]
    neighbours.registry.transfer_failure = (grpc.StatusCode.DATA_LOSS, "digest mismatch")
    response = await client.post("/models/create", json={"from": "other/model"})

    assert response.status_code == 200
    lines = [httpx.Response(200, content=line).json() for line in response.text.splitlines()]
    assert [line["type"] for line in lines] == ["progress", "error"]
    assert "digest mismatch" in lines[-1]["message"]


async def test_push_streams_progress(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.registry.transfer_events = [
        registry_pb2.TransferProgress(
            type=registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS,
            message="Model pushed successfully",
            mode="push",
        )
    ]
    response = await client.post("/models/ai/smollm2/push")

    assert response.status_code == 200
    assert response.text.splitlines() and '"success"' in response.text
    (request,) = neighbours.registry.transfer_requests
    assert isinstance(request, registry_pb2.PushRequest)
    assert request.reference == "ai/smollm2"


@pytest.mark.parametrize(
    "body",
    [b"{bad", b"{}", b'{"from": ""}', b'{"from": 3}', b'{"from": "Bad/Name"}'],
    ids=["malformed", "missing", "empty", "not-string", "bad-reference"],
)
async def test_create_rejects_bad_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/models/create", content=body)

    assert response.status_code == 400
    error_of(response)


@pytest.mark.parametrize(
    ("body", "unload_all", "models"),
    [
        ({"all": True}, True, []),
        ({"models": ["ai/smollm2"], "backend": "llama.cpp"}, False, ["ai/smollm2"]),
    ],
)
async def test_engines_unload(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    body: dict[str, object],
    unload_all: bool,
    models: list[str],
) -> None:
    neighbours.scheduler.unloaded = 2

    response = await client.post("/engines/unload", json=body)

    assert response.status_code == 200
    assert response.json() == {"unloaded_runners": 2}
    [request] = neighbours.scheduler.unload_requests
    assert request.all is unload_all
    assert list(request.models) == models


@pytest.mark.parametrize(
    "body", [b"{}", b"", b'{"all": "sometimes"}', b'{"models": "smollm2"}', b"{oops"]
)
async def test_bad_unload_requests_are_400(
    client: httpx.AsyncClient, neighbours: Neighbours, body: bytes
) -> None:
    response = await client.post("/engines/unload", content=body)

    assert response.status_code == 400
    error_of(response)
    assert not neighbours.scheduler.unload_requests


async def test_unload_on_another_backend_unloads_nothing(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.post("/engines/unload", json={"all": True, "backend": "vllm"})

    assert response.json() == {"unloaded_runners": 0}
    assert not neighbours.scheduler.unload_requests


async def test_registry_down_is_503(settings: GatewaySettings) -> None:
    down = f"127.0.0.1:{free_port()}"
    async with asgi_client(dataclasses.replace(settings, registry_address=down)) as client:
        response = await client.get("/models")

    assert response.status_code == 503
    assert "registry unavailable" in str(error_of(response)["message"])


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/chat/completions", 405), ("GET", "/no/such/route", 404)],
)
async def test_framework_errors_use_the_openai_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path)

    assert response.status_code == status
    error_of(response)


async def test_unload_body_over_the_limit_is_413(
    client: httpx.AsyncClient, settings: GatewaySettings
) -> None:
    models = ["m" * 100] * (settings.max_body_bytes // 100)

    response = await client.post("/engines/unload", json={"models": models})

    assert response.status_code == 413
