"""Bad input and failures through the real stack: the right status, the OpenAI error shape, and
services that keep serving afterwards."""

from __future__ import annotations

import httpx
import openai
import pytest

from services.stack.launcher import LocalStack

pytestmark = pytest.mark.integration

CHAT = "/engines/llama.cpp/v1/chat/completions"


def _assert_openai_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert "type" in error
    return str(error["message"])


async def test_unknown_model_is_404_through_the_sdk(stack: LocalStack) -> None:
    async with openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/v1", api_key="unused", max_retries=0
    ) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="ai/no-such-model", messages=[{"role": "user", "content": "hi"}]
            )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"messages": []}', 400),
        (b'{"model": 42, "messages": []}', 400),
        (b'{"model": "Bad Name!", "messages": []}', 400),
        (b'{"model": "ai/../../etc", "messages": []}', 400),
        (b'{"model": "ai/no-such-model", "messages": []}', 404),
    ],
    ids=[
        "malformed",
        "not-object",
        "no-model",
        "model-not-string",
        "bad-ref",
        "traversal",
        "unknown",
    ],
)
async def test_bad_requests(stack: LocalStack, body: bytes, status: int) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        response = await http.post(CHAT, content=body, headers={"Content-Type": "application/json"})
    _assert_openai_error(response, status)


async def test_oversized_body_is_refused(stack: LocalStack) -> None:
    big = b'{"model": "ai/smollm2", "prompt": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        response = await http.post("/v1/completions", content=big)
    _assert_openai_error(response, 413)


async def test_unknown_backend_is_404(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        response = await http.post(
            "/engines/vllm2/v1/chat/completions", json={"model": "ai/smollm2", "messages": []}
        )
    _assert_openai_error(response, 404)


async def test_llama_server_rejection_passes_through(stack: LocalStack) -> None:
    """llama-server's own 4xx (here: messages of the wrong type) reaches the client as such."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as http:
        response = await http.post(CHAT, json={"model": "ai/smollm2", "messages": "nope"})
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


async def test_model_management_routes(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        listed = (await http.get("/models")).json()
        assert [m["tags"] for m in listed] == [["ai/smollm2:latest"]]
        model = listed[0]
        assert model["id"].startswith("sha256:")
        config = model["config"]
        assert config["format"] == "gguf"
        assert config["architecture"] == "llama"
        assert config["quantization"] == "Q4_1"
        assert config["context_size"] == 8192

        for name in ("ai/smollm2", "smollm2", "ai/smollm2:latest"):
            inspected = await http.get(f"/models/{name}")
            assert inspected.status_code == 200, inspected.text
            assert inspected.json()["id"] == model["id"]
        assert (await http.get("/models/ai/unknown")).status_code == 404

        cached = await http.post("/models/create", json={"from": "ai/smollm2"})
        assert cached.status_code == 200, cached.text
        assert cached.json()["type"] == "success"

        tagged = await http.post("/models/ai/smollm2/tag", params={"repo": "ai/copy", "tag": "v1"})
        assert tagged.status_code == 201, tagged.text
        refused = await http.delete(f"/models/{model['id']}")
        assert refused.status_code == 409, refused.text
        removed = await http.delete("/models/ai/copy:v1")
        assert removed.status_code == 200, removed.text
        assert {"Untagged": "ai/copy:v1"} in removed.json()
        assert [m["tags"] for m in (await http.get("/models")).json()] == [["ai/smollm2:latest"]]
        assert (await http.delete("/models/ai/copy:v1")).status_code == 404
