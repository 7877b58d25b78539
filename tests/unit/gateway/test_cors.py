"""DMR's CORS rules: loopback origins by default, DMR_ORIGINS replaces them, `*` allows all."""

from __future__ import annotations

import dataclasses
import logging

import httpx
import pytest

from services.gateway.config import GatewaySettings
from services.gateway.cors import OriginPolicy
from tests.unit.gateway.conftest import asgi_client


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost", True),
        ("http://localhost:3000", True),
        ("https://localhost:8443", True),
        ("https://127.0.0.1:8443", True),
        ("HTTP://LOCALHOST:3000/", True),
        ("http://0.0.0.0:8080", False),
        ("http://[::1]:5173", False),
        ("http://127.0.0.2:8080", False),
        ("http://evil.example", False),
        ("http://localhost.evil.example", False),
        ("http://evil.example/http://localhost", False),
        ("file://localhost", False),
        ("null", False),
        ("http://localhost:notaport", False),
    ],
)
def test_default_policy_is_localhost_and_127_0_0_1(origin: str, allowed: bool) -> None:
    assert OriginPolicy([]).allows(origin) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://example.com", True),
        ("HTTPS://EXAMPLE.COM/", True),
        ("https://example.com:8443", False),
        ("http://app.example:3000", True),
        ("http://app.example", True),
        ("https://app.example:3000", False),
        # The list replaces the default: loopback is no longer allowed unless listed.
        ("http://localhost:3000", False),
        ("http://127.0.0.1", False),
    ],
)
def test_dmr_origins_replace_the_default(origin: str, allowed: bool) -> None:
    policy = OriginPolicy(["https://example.com", "http://app.example:*"])
    assert policy.allows(origin) is allowed


def test_star_allows_everything() -> None:
    assert OriginPolicy(["*"]).allows("http://evil.example")
    assert OriginPolicy(["https://example.com", "*"]).allows("http://evil.example")
    assert not OriginPolicy(["https://example.com"]).allows("http://evil.example")


async def test_requests_without_origin_are_untouched(client: httpx.AsyncClient) -> None:
    response = await client.get("/models")

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_allowed_origin_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/models", headers={"Origin": "http://localhost:3000"})

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "Retry-After" in response.headers["access-control-expose-headers"]


async def test_other_origins_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        content=b'{"model": "ai/smollm2"}',
        headers={"Origin": "http://evil.example"},
    )

    assert response.status_code == 403
    assert response.json()["error"]["message"] == "Origin not allowed"


async def test_preflight(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/v1/chat/completions",
        headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert response.headers["access-control-allow-methods"] == "GET, POST, DELETE"
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_preflight_names_requested_headers(client: httpx.AsyncClient) -> None:
    # Fetch never lets `*` cover Authorization: it must be named for an API key to pass.
    response = await client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )

    assert response.status_code == 204
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed


async def test_dmr_origins_in_the_app(settings: GatewaySettings) -> None:
    custom = dataclasses.replace(settings, cors_origins=("https://app.example",))
    async with asgi_client(custom) as client:
        listed = await client.get("/models", headers={"Origin": "https://app.example"})
        loopback = await client.get("/models", headers={"Origin": "http://localhost:3000"})

    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "https://app.example"
    assert loopback.status_code == 403


async def test_star_warns_at_startup(
    settings: GatewaySettings, caplog: pytest.LogCaptureFixture
) -> None:
    everyone = dataclasses.replace(settings, cors_origins=("*",))
    with caplog.at_level(logging.WARNING, logger="services.gateway.cors"):
        async with asgi_client(everyone) as client:
            response = await client.get("/models", headers={"Origin": "http://evil.example"})

    assert response.status_code == 200
    assert any("DMR_ORIGINS=*" in record.getMessage() for record in caplog.records)


async def test_unix_socket_mode_has_no_cors(settings: GatewaySettings) -> None:
    socket_mode = dataclasses.replace(settings, socket_path="/tmp/unused.sock")
    async with asgi_client(socket_mode) as client:
        response = await client.get("/models", headers={"Origin": "http://evil.example"})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
