"""DMR's CORS rules: browsers from unknown origins are refused, loopback and DMR_ORIGINS pass."""

from __future__ import annotations

import dataclasses

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
        ("https://127.0.0.1:8443", True),
        ("http://0.0.0.0:8080", True),
        ("http://[::1]:5173", True),
        ("https://example.com", True),
        ("HTTPS://EXAMPLE.COM/", True),
        ("https://example.com:8443", False),
        ("http://evil.example", False),
        ("http://localhost.evil.example", False),
        ("file://localhost", False),
        ("null", False),
        ("http://localhost:notaport", False),
    ],
)
def test_origin_policy(origin: str, allowed: bool) -> None:
    assert OriginPolicy(["https://example.com"]).allows(origin) is allowed


def test_star_alone_allows_everything() -> None:
    assert OriginPolicy(["*"]).allows("http://evil.example")
    assert not OriginPolicy(["*", "https://example.com"]).allows("http://evil.example")


async def test_requests_without_origin_are_untouched(client: httpx.AsyncClient) -> None:
    response = await client.get("/models")

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_allowed_origin_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/models", headers={"Origin": "http://localhost:3000"})

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"


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


async def test_dmr_origins_extend_the_list(settings: GatewaySettings) -> None:
    extended = dataclasses.replace(settings, cors_origins=("https://app.example",))
    async with asgi_client(extended) as client:
        response = await client.get("/models", headers={"Origin": "https://app.example"})

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"
