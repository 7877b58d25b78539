"""What fuzzing the gateway found (tests/fuzz, docs/reliability.md), one regression test each, plus
the OpenAPI document the fuzzer is driven by."""

from __future__ import annotations

import json
import warnings
from typing import Any

import httpx
import pytest

from services.gateway.anthropic.models import parse_messages
from services.gateway.anthropic.translate import chat_request
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from tests.unit.gateway.conftest import Neighbours
from tests.unit.gateway.fakes import answer

CHAT = "/engines/llama.cpp/v1/chat/completions"
HELLO = {"model": "ai/smollm2", "messages": [{"role": "user", "content": "hi"}]}


def _llama_error(status: int, message: str) -> bytes:
    return json.dumps(
        {"error": {"code": status, "message": message, "type": "server_error"}}
    ).encode()


def _document() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_app(GatewaySettings()).openapi()


async def test_configure_with_an_object_for_mode_is_400(client: httpx.AsyncClient) -> None:
    # Was a 500: an unhashable dict tested for membership in a frozenset.
    response = await client.post("/engines/_configure", json={"model": "ai/smollm2", "mode": {}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "mode"


@pytest.mark.parametrize(
    "message",
    [
        "Failed to parse tools: Expected 'tools' to be an array, got {}; tools = {}",
        "Failed to parse messages: [json.exception.type_error.302] type must be string",
        "image input is not supported - hint: if this is unexpected, you may need to provide the "
        "mmproj",
    ],
)
async def test_input_llama_server_calls_a_server_error_is_400(
    client: httpx.AsyncClient, neighbours: Neighbours, message: str
) -> None:
    neighbours.worker.scripts.append(answer(500, "application/json", _llama_error(500, message)))
    response = await client.post(CHAT, json={**HELLO, "tools": {}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] == message
    assert error["type"] == "invalid_request_error"


async def test_a_real_llama_server_failure_stays_5xx(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    body = _llama_error(500, "failed to allocate KV cache")
    neighbours.worker.scripts.append(answer(500, "application/json", body))
    response = await client.post(CHAT, json=HELLO)
    assert response.status_code == 500
    assert response.content == body


async def test_translated_dialects_get_the_400_too(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    message = "Failed to parse messages: Missing tool call type: 1"
    for _ in range(2):
        neighbours.worker.scripts.append(
            answer(500, "application/json", _llama_error(500, message))
        )
    ollama = await client.post("/api/chat", json={**HELLO, "stream": False})
    assert ollama.status_code == 400, ollama.text
    assert ollama.json() == {"error": message}
    anthropic = await client.post("/anthropic/v1/messages", json={**HELLO, "max_tokens": 4})
    assert anthropic.status_code == 400, anthropic.text
    assert anthropic.json()["error"]["message"] == message


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/api/tags", "ollama"),
        ("/anthropic/v1/messages", "anthropic"),
        ("/v1/messages", "anthropic"),
        (CHAT, "openai"),
    ],
)
async def test_method_not_allowed_is_in_the_routes_dialect(
    client: httpx.AsyncClient, path: str, shape: str
) -> None:
    # Was OpenAI's shape everywhere: routing's own 405 ignored the dialect of the path.
    response = await client.request("OPTIONS", path)
    assert response.status_code == 405
    body = response.json()
    if shape == "ollama":
        assert isinstance(body["error"], str) and body["error"]
    elif shape == "anthropic":
        assert body["type"] == "error" and body["error"]["message"]
    else:
        assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"


async def test_anthropic_model_by_id_declares_and_reads_its_path_parameter(
    client: httpx.AsyncClient,
) -> None:
    operation = _document()["paths"]["/anthropic/v1/models/{model_id}"]["get"]
    assert [parameter["name"] for parameter in operation["parameters"]] == ["model_id"]
    response = await client.get("/anthropic/v1/models/ai/smollm2")
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "model"


@pytest.mark.parametrize(
    ("path", "method"),
    [
        (CHAT, "post"),
        ("/engines/llama.cpp/v1/completions", "post"),
        ("/engines/llama.cpp/v1/embeddings", "post"),
        ("/engines/llama.cpp/v1/responses", "post"),
        ("/anthropic/v1/messages", "post"),
        ("/anthropic/v1/messages/count_tokens", "post"),
        ("/api/chat", "post"),
        ("/api/generate", "post"),
        ("/api/embed", "post"),
        ("/api/pull", "post"),
        ("/api/delete", "delete"),
        ("/models/create", "post"),
        ("/models/{name}/push", "post"),
        ("/engines/unload", "post"),
        ("/engines/_configure", "post"),
    ],
)
def test_routes_that_read_their_body_document_it(path: str, method: str) -> None:
    body = _document()["paths"][path][method]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["type"] == "object" and schema["properties"]
    # Standalone: nothing the document would have to resolve elsewhere.
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text and "discriminator" not in text


def test_pydantic_bodies_keep_their_validation_in_the_document() -> None:
    messages = _document()["paths"]["/anthropic/v1/messages"]["post"]["requestBody"]
    schema = messages["content"]["application/json"]["schema"]
    assert {"model", "messages", "max_tokens"} <= set(schema["required"])
    assert schema["properties"]["max_tokens"]["minimum"] == 1
    create = _document()["paths"]["/models/create"]["post"]["requestBody"]
    assert "from" in create["content"]["application/json"]["schema"]["properties"]


def test_tag_and_delete_document_their_query_parameters() -> None:
    paths = _document()["paths"]
    tag = {p["name"]: p["required"] for p in paths["/models/{name}/tag"]["post"]["parameters"]}
    assert tag == {"name": True, "repo": True, "tag": True}
    delete = {p["name"] for p in paths["/models/{name}"]["delete"]["parameters"]}
    assert delete == {"name", "force"}


def test_metrics_document_the_prometheus_text_format() -> None:
    content = _document()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain"]


def test_anthropic_messages_that_are_all_empty_translate() -> None:
    # Was a 500: an IndexError looking at the last of no translated messages.
    request = parse_messages(
        {"model": "ai/smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": []}]}
    )
    translation = chat_request(request)
    assert translation.body["messages"] == []
    assert translation.prefill == ""
