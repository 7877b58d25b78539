"""`GET /models/{name}?remote=true`: the registry's InspectRemote in DMR's inspect shape."""

from __future__ import annotations

import grpc
import httpx
import pytest

from modelrunner.v1 import common_pb2
from tests.unit.gateway.conftest import Neighbours
from tests.unit.gateway.fakes import MODEL_ID, smollm2
from tests.unit.gateway.test_inference import error_of

REMOTE_ID = "sha256:" + "ef" * 32
REMOTE_NAME = "registry.lan:5000/team/smollm2:v2"


def remote_model() -> common_pb2.Model:
    """Unlike the local smollm2 in id, quantization and context size, and without tags."""
    model = smollm2()
    model.id = REMOTE_ID
    del model.tags[:]
    model.config.quantization = "Q8_0"
    model.config.context_size = 2048
    return model


REMOTE_JSON = {
    "id": REMOTE_ID,
    "tags": [],
    "created": 1_700_000_000,
    "config": {
        "format": "gguf",
        "quantization": "Q8_0",
        "parameters": "134.52M",
        "architecture": "llama",
        "size": "86.94MiB",
        "gguf": {"general.architecture": "llama", "llama.context_length": "8192"},
        "context_size": 2048,
    },
}


@pytest.mark.parametrize("flag", ["true", "1", "True", ""])
async def test_remote_inspect_answers_the_registrys_copy(
    client: httpx.AsyncClient, neighbours: Neighbours, flag: str
) -> None:
    neighbours.registry.remote_models[REMOTE_NAME] = remote_model()

    response = await client.get(f"/models/{REMOTE_NAME}", params={"remote": flag})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == REMOTE_JSON
    (sent,) = neighbours.registry.remote_requests
    assert sent.reference == REMOTE_NAME
    assert sent.credentials.bearer_token == ""


@pytest.mark.parametrize("query", ["", "?remote=false", "?remote=0"])
async def test_without_remote_the_local_model_is_inspected(
    client: httpx.AsyncClient, neighbours: Neighbours, query: str
) -> None:
    neighbours.registry.remote_models["ai/smollm2"] = remote_model()

    response = await client.get(f"/models/ai/smollm2{query}")

    assert response.status_code == 200
    assert response.json()["id"] == MODEL_ID
    assert response.json()["tags"] == ["ai/smollm2:latest"]
    assert neighbours.registry.remote_requests == []


async def test_a_bad_remote_flag_is_a_400(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.get("/models/ai/smollm2", params={"remote": "maybe"})

    assert response.status_code == 400
    assert error_of(response)["param"] == "remote"
    assert neighbours.registry.remote_requests == []


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        ("Bearer hub-token", "hub-token"),
        ("bearer  spaced ", "spaced"),
        ("Basic YWxpY2U6cHc=", ""),
        ("Bearer", ""),
    ],
)
async def test_a_bearer_authorization_goes_to_the_registry(
    client: httpx.AsyncClient, neighbours: Neighbours, authorization: str, token: str
) -> None:
    neighbours.registry.remote_models[REMOTE_NAME] = remote_model()

    response = await client.get(
        f"/models/{REMOTE_NAME}",
        params={"remote": "true"},
        headers={"Authorization": authorization},
    )

    assert response.status_code == 200, response.text
    (sent,) = neighbours.registry.remote_requests
    assert sent.credentials.bearer_token == token
    assert (sent.credentials.username, sent.credentials.password) == ("", "")


@pytest.mark.parametrize(
    ("code", "status", "error_type"),
    [
        (grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
        (grpc.StatusCode.FAILED_PRECONDITION, 422, "invalid_request_error"),
        (grpc.StatusCode.UNAVAILABLE, 503, "server_error"),
        (grpc.StatusCode.DATA_LOSS, 502, "server_error"),
    ],
)
async def test_registry_errors_become_openai_errors(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    code: grpc.StatusCode,
    status: int,
    error_type: str,
) -> None:
    neighbours.registry.remote_failure = (code, f"upstream says {code.name}")

    response = await client.get(f"/models/{REMOTE_NAME}", params={"remote": "1"})

    assert response.status_code == status
    error = error_of(response)
    assert error["type"] == error_type
    assert f"upstream says {code.name}" in str(error["message"])


async def test_an_unknown_remote_model_is_404_even_when_it_exists_locally(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.get("/models/ai/smollm2:latest", params={"remote": "true"})

    assert response.status_code == 404
    assert "ai/smollm2:latest" in str(error_of(response)["message"])
    assert [r.reference for r in neighbours.registry.remote_requests] == ["ai/smollm2:latest"]
