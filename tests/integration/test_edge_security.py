"""The gateway's edge on the real chain: API keys through the official SDKs, DMR_ORIGINS
replacing the loopback default, the max_tokens cap in every dialect, and the Unix-socket
listener (no CORS there) with a per-client rate limit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from services.stack.launcher import LocalStack
from services.stack.processes import ServiceProcess
from tests.integration.conftest import StackFactory
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

KEY = "sk-edge-test-2f9c1e"
MODEL = "ai/smollm2"
CAP = 16
HI = [{"role": "user", "content": "Say hello."}]
WAIT = 60.0


@pytest.fixture(scope="module")
async def stack(stack_factory: StackFactory) -> AsyncIterator[LocalStack]:
    env = {
        "MODEL_RUNNER_API_KEYS": KEY,
        "DMR_ORIGINS": "http://allowed.example:*",
        "GATEWAY_MAX_TOKENS": str(CAP),
    }
    async with stack_factory(env) as running:
        yield running


def _openai(stack: LocalStack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/engines/v1", api_key=key, max_retries=0, timeout=WAIT
    )


async def test_openai_sdk_needs_the_key(stack: LocalStack) -> None:
    async with _openai(stack, "sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert refused.value.status_code == 401
    assert "sk-wrong" not in str(refused.value)

    async with _openai(stack, KEY) as client:
        # No limit asked: the cap is what llama-server gets.
        reply = await client.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= CAP


async def test_openai_over_the_cap_is_400(stack: LocalStack) -> None:
    async with _openai(stack, KEY) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=CAP + 1)  # type: ignore[arg-type]
    assert str(CAP) in str(refused.value)


async def test_anthropic_sdk_sends_x_api_key(stack: LocalStack) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=stack.gateway_url + "/anthropic", api_key=KEY, max_retries=0, timeout=WAIT
    ) as client:
        reply = await client.messages.create(model=MODEL, messages=HI, max_tokens=8)  # type: ignore[arg-type]
        assert reply.usage.output_tokens <= 8
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.create(model=MODEL, messages=HI, max_tokens=CAP + 1)  # type: ignore[arg-type]


async def test_ollama_num_predict_is_capped(stack: LocalStack) -> None:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, timeout=WAIT, headers={"Authorization": f"Bearer {KEY}"}
    ) as http:
        over = await http.post(
            "/api/chat",
            json={"model": MODEL, "messages": HI, "stream": False, "options": {"num_predict": 99}},
        )
        unlimited = await http.post(
            "/api/chat",
            json={"model": MODEL, "messages": HI, "stream": False, "options": {"num_predict": -1}},
        )
    assert over.status_code == 400, over.text
    assert unlimited.status_code == 200, unlimited.text
    assert unlimited.json()["eval_count"] <= CAP


async def test_dmr_origins_replace_loopback(stack: LocalStack) -> None:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, timeout=WAIT, headers={"Authorization": f"Bearer {KEY}"}
    ) as http:
        listed = await http.get("/models", headers={"Origin": "http://allowed.example:8080"})
        loopback = await http.get("/models", headers={"Origin": "http://localhost:3000"})
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "http://allowed.example:8080"
    assert loopback.status_code == 403


@contextlib.asynccontextmanager
async def _socket_gateway(stack: LocalStack, socket: Path) -> AsyncIterator[httpx.AsyncClient]:
    env = {
        name: value
        for name, value in stack.gateway.env.items()
        if name not in {"MODEL_RUNNER_PORT", "MODEL_RUNNER_API_KEYS"}
    }
    gateway = ServiceProcess(
        "gateway-uds",
        "services.gateway",
        {**env, "MODEL_RUNNER_SOCK": str(socket), "GATEWAY_RATE_LIMIT_RPM": "3"},
        socket.parent / "gateway-uds.log",
    )
    await gateway.start()
    try:
        transport = httpx.AsyncHTTPTransport(uds=str(socket))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", timeout=WAIT
        ) as http:

            def listening() -> bool:
                assert gateway.exit_reason() is None, gateway.exit_reason()
                return socket.exists()

            await wait_until(listening, what="the gateway's Unix socket", timeout=WAIT)
            yield http
    finally:
        await gateway.stop(15.0)


async def test_unix_socket_listener_has_no_cors_and_limits_rate(
    stack: LocalStack, tmp_path: Path
) -> None:
    async with _socket_gateway(stack, tmp_path / "model-runner.sock") as http:
        # DMR: CORS is off on the socket; no TCP port is opened either.
        models = await http.get("/models", headers={"Origin": "http://evil.example"})
        chat = await http.post(
            "/engines/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 4}
        )
        third = await http.get("/models")
        limited = await http.get("/models")

    assert models.status_code == 200
    assert "access-control-allow-origin" not in models.headers
    assert chat.status_code == 200, chat.text
    assert third.status_code == 200
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
