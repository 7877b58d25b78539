"""API keys and rate limits in front of every route, as a client and a browser see them."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.common.clock import Clock
from services.common.env import SettingError
from services.gateway.app import create_app
from services.gateway.auth import ApiKeys
from services.gateway.config import GatewaySettings
from tests.unit.gateway.conftest import Neighbours
from tests.unit.gateway.fakes import answer, smollm2
from tests.unit.scheduler.fakes import FakeClock

KEY = "sk-test-key-0123456789"
OTHER_KEY = "sk-second-key-abcdef"
CHAT = b'{"model": "ai/smollm2", "messages": [{"role": "user", "content": "hi"}]}'


@contextlib.asynccontextmanager
async def gateway(
    settings: GatewaySettings, clock: Clock | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture
def keyed(settings: GatewaySettings) -> GatewaySettings:
    return dataclasses.replace(settings, api_keys=(KEY, OTHER_KEY))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_key_identity_is_its_position_never_the_key() -> None:
    keys = ApiKeys([KEY, OTHER_KEY])
    assert keys.identify(KEY) == "key-1"
    assert keys.identify(OTHER_KEY) == "key-2"
    assert keys.identify(KEY[:-1]) is None
    assert keys.identify(KEY + "x") is None
    assert keys.identify("") is None
    assert not ApiKeys([]).enabled


async def test_open_without_keys(client: httpx.AsyncClient) -> None:
    assert (await client.get("/models")).status_code == 200


async def test_missing_key_is_401_in_openai_shape(keyed: GatewaySettings) -> None:
    async with gateway(keyed) as client:
        response = await client.post("/v1/chat/completions", content=CHAT)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="model-runner"'
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == 401
    assert "Authorization: Bearer" in error["message"]


async def test_wrong_key_is_401_and_never_echoed(
    keyed: GatewaySettings, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-guess-777"
    with caplog.at_level(logging.DEBUG):
        async with gateway(keyed) as client:
            response = await client.get("/models", headers=bearer(wrong))
            accepted = await client.get("/models", headers=bearer(KEY))

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert wrong not in response.text
    assert accepted.status_code == 200
    logged = caplog.text
    assert wrong not in logged
    assert KEY not in logged


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
async def test_every_configured_key_works(keyed: GatewaySettings, key: str) -> None:
    async with gateway(keyed) as client:
        models = await client.get("/models", headers=bearer(key))
        chat = await client.post("/v1/chat/completions", content=CHAT, headers=bearer(key))

    assert models.status_code == 200
    assert chat.status_code == 200


async def test_x_api_key_on_anthropic_routes_only(keyed: GatewaySettings) -> None:
    async with gateway(keyed) as client:
        anthropic = await client.get("/anthropic/v1/models", headers={"x-api-key": KEY})
        openai = await client.get("/v1/models", headers={"x-api-key": KEY})

    assert anthropic.status_code == 200
    assert openai.status_code == 401


async def test_liveness_ping_is_exempt_and_metrics_is_not(keyed: GatewaySettings) -> None:
    async with gateway(keyed) as client:
        root = await client.get("/")
        metrics = await client.get("/metrics")

    assert root.status_code == 200
    assert metrics.status_code == 401


async def test_exempt_paths_are_configurable(keyed: GatewaySettings) -> None:
    open_models = dataclasses.replace(keyed, auth_exempt_paths=("/models",))
    async with gateway(open_models) as client:
        models = await client.get("/models")
        root = await client.get("/")

    assert models.status_code == 200
    assert root.status_code == 401


async def test_preflight_needs_no_key_but_the_request_does(keyed: GatewaySettings) -> None:
    origin = {"Origin": "http://localhost:3000"}
    async with gateway(keyed) as client:
        preflight = await client.options(
            "/v1/chat/completions",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        unauthorized = await client.get("/models", headers=origin)
        refused_origin = await client.get("/models", headers={"Origin": "http://evil.example"})

    assert preflight.status_code == 204
    assert unauthorized.status_code == 401
    # The browser may read the 401: it carries the CORS headers.
    assert unauthorized.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert refused_origin.status_code == 403


async def test_key_is_not_passed_on_to_the_upstream_registry(
    keyed: GatewaySettings, neighbours: Neighbours
) -> None:
    neighbours.registry.remote_models["ai/smollm2"] = smollm2()
    async with gateway(keyed) as client:
        response = await client.get("/models/ai/smollm2?remote=true", headers=bearer(KEY))

    assert response.status_code == 200
    (request,) = neighbours.registry.remote_requests
    assert request.credentials.bearer_token == ""


async def test_requests_per_minute_per_key(keyed: GatewaySettings) -> None:
    clock = FakeClock()
    limited = dataclasses.replace(keyed, rate_limit_rpm=2)
    async with gateway(limited, clock) as client:
        first = [(await client.get("/models", headers=bearer(KEY))).status_code for _ in range(2)]
        refused = await client.get("/models", headers=bearer(KEY))
        other = await client.get("/models", headers=bearer(OTHER_KEY))
        clock.advance(30.0)
        again = await client.get("/models", headers=bearer(KEY))

    assert first == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert other.status_code == 200
    assert again.status_code == 200


async def test_without_keys_limits_apply_per_client_address(settings: GatewaySettings) -> None:
    limited = dataclasses.replace(settings, rate_limit_rpm=1)
    async with gateway(limited, FakeClock()) as client:
        first = await client.get("/models")
        second = await client.get("/models")

    assert first.status_code == 200
    assert second.status_code == 429


async def test_tokens_per_minute_counts_usage_of_answers(
    keyed: GatewaySettings, neighbours: Neighbours
) -> None:
    clock = FakeClock()
    usage = b'{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":100}}'
    neighbours.worker.scripts.append(answer(200, "application/json", usage))
    limited = dataclasses.replace(keyed, rate_limit_tpm=60)
    async with gateway(limited, clock) as client:
        first = await client.post("/v1/chat/completions", content=CHAT, headers=bearer(KEY))
        refused = await client.post("/v1/chat/completions", content=CHAT, headers=bearer(KEY))
        clock.advance(61.0)  # 120 tokens overdrew 60 a minute by 60: one minute to recover
        again = await client.get("/models", headers=bearer(KEY))

    assert first.status_code == 200
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    assert again.status_code == 200


def test_keys_from_env_and_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# one key a line\n{OTHER_KEY}\n\n  sk-third  \n{KEY}\n")
    settings = GatewaySettings.from_env(
        {"MODEL_RUNNER_API_KEYS": f" {KEY} ,", "MODEL_RUNNER_API_KEYS_FILE": str(keys_file)}
    )
    assert settings.api_keys == (KEY, OTHER_KEY, "sk-third")
    assert KEY not in repr(settings)


def test_unreadable_keys_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="MODEL_RUNNER_API_KEYS_FILE"):
        GatewaySettings.from_env({"MODEL_RUNNER_API_KEYS_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("env", "socket_path"),
    [
        ({}, None),
        ({"MODEL_RUNNER_SOCK": "/run/dmr.sock"}, "/run/dmr.sock"),
        # DMR: a TCP port wins over the socket.
        ({"MODEL_RUNNER_SOCK": "/run/dmr.sock", "MODEL_RUNNER_PORT": "12434"}, None),
    ],
)
def test_socket_mode_only_without_a_port(env: dict[str, str], socket_path: str | None) -> None:
    assert GatewaySettings.from_env(env).socket_path == socket_path


@pytest.mark.parametrize(
    "name", ["GATEWAY_RATE_LIMIT_RPM", "GATEWAY_RATE_LIMIT_TPM", "GATEWAY_MAX_TOKENS"]
)
def test_limits_must_not_be_negative(name: str) -> None:
    with pytest.raises(SettingError, match=name):
        GatewaySettings.from_env({name: "-1"})


def test_edge_defaults() -> None:
    settings = GatewaySettings.from_env({})
    assert settings.api_keys == ()
    assert settings.auth_exempt_paths == ("/",)
    assert (settings.rate_limit_rpm, settings.rate_limit_tpm, settings.max_tokens) == (0, 0, 0)
    assert settings.header_timeout == 10.0
    assert settings.cors_origins == ()
