"""Input limits: the body limit on every route that reads one, and the max_tokens cap."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from services.gateway.__main__ import build_server
from services.gateway.config import GatewaySettings
from services.gateway.errors import InvalidRequest
from services.gateway.limits import cap_max_tokens
from tests.support.processes import free_port, wait_until
from tests.unit.gateway.conftest import Neighbours, asgi_client, live_gateway

# Every route that reads a JSON body (uploads of model files have their own, larger limit;
# routes that take no body never read one).
BODY_ROUTES = [
    "/v1/chat/completions",
    "/engines/v1/completions",
    "/engines/llama.cpp/v1/embeddings",
    "/v1/responses",
    "/anthropic/v1/messages",
    "/v1/messages/count_tokens",
    "/models/create",
    "/models/ai/smollm2/push",
    "/engines/unload",
    "/engines/_configure",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/api/pull",
    "/api/push",
    "/api/copy",
]


def _oversized(settings: GatewaySettings) -> bytes:
    padding = "x" * settings.max_body_bytes
    return orjson.dumps({"model": "ai/smollm2", "prompt": padding, "messages": []})


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_body_limit_with_and_without_content_length(
    settings: GatewaySettings, path: str
) -> None:
    body = _oversized(settings)

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    async with (
        live_gateway(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        declared = await client.post(path, content=body)
        streamed = await client.post(path, content=chunked())

    assert streamed.request.headers.get("transfer-encoding") == "chunked"
    for response in (declared, streamed):
        assert response.status_code == 413, (path, response.text)
        assert "error" in response.json()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "m", "max_tokens": 10}, {"model": "m", "max_tokens": 10}),
        ({"model": "m", "max_tokens": 100}, {"model": "m", "max_tokens": 100}),
        ({"model": "m", "max_completion_tokens": 5}, {"model": "m", "max_completion_tokens": 5}),
        # No limit asked: the cap applies, so nothing generates without bound.
        ({"model": "m"}, {"model": "m", "max_tokens": 100}),
        ({"model": "m", "max_tokens": None}, {"model": "m", "max_tokens": 100}),
    ],
)
def test_cap_within_limit(body: dict[str, object], expected: dict[str, object]) -> None:
    assert orjson.loads(cap_max_tokens(orjson.dumps(body), 100)) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", 101), ("max_completion_tokens", 1000), ("n_predict", -1), ("max_tokens", -1)],
)
def test_cap_refuses_more(field: str, value: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        cap_max_tokens(orjson.dumps({"model": "m", field: value}), 100)
    assert caught.value.param == field
    assert "100" in caught.value.message


def test_no_cap_leaves_the_body_alone() -> None:
    body = b'{"model":"m","max_tokens":1000000}'
    assert cap_max_tokens(body, 0) is body


CHAT = {"model": "ai/smollm2", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "max_tokens": 65}, "max_tokens"),
        ("/api/chat", {**CHAT, "stream": False, "options": {"num_predict": 65}}, "max_tokens"),
        ("/v1/responses", {"model": "ai/smollm2", "input": "hi", "max_output_tokens": 65}, None),
        ("/anthropic/v1/messages", {**CHAT, "max_tokens": 65}, None),
    ],
)
async def test_every_dialect_is_capped(
    settings: GatewaySettings, neighbours: Neighbours, path: str, body: object, param: str | None
) -> None:
    capped = dataclasses.replace(settings, max_tokens=64)
    async with asgi_client(capped) as client:
        response = await client.post(path, content=orjson.dumps(body))

    assert response.status_code == 400, response.text
    assert "64" in response.text
    assert neighbours.worker.requests == []


async def test_uncapped_request_gets_the_cap_forwarded(
    settings: GatewaySettings, neighbours: Neighbours
) -> None:
    capped = dataclasses.replace(settings, max_tokens=64)
    async with asgi_client(capped) as client:
        response = await client.post("/v1/chat/completions", content=orjson.dumps(CHAT))

    assert response.status_code == 200
    (forwarded,) = neighbours.worker.requests
    assert orjson.loads(forwarded.body)["max_tokens"] == 64


@contextlib.asynccontextmanager
async def header_deadline_gateway(
    settings: GatewaySettings, header_timeout: float
) -> AsyncIterator[int]:
    """The gateway as `build_server` configures it (minus signals), on a free port."""
    port = free_port()
    server = build_server(
        dataclasses.replace(settings, port=port, header_timeout=header_timeout, log_level="WARNING")
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, what="uvicorn to start")
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(seconds):
            while await reader.read(1024):
                pass
            return True
    return False


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"GET /models HTTP/1.1\r\nHost: x\r\n",  # headers never finished (slowloris)
    ],
)
async def test_slow_headers_are_cut_off(settings: GatewaySettings, sent: bytes) -> None:
    async with header_deadline_gateway(settings, 0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        await writer.drain()
        try:
            assert await _closed_within(reader, 5.0)
        finally:
            writer.close()


async def test_prompt_headers_are_served_and_kept_alive(settings: GatewaySettings) -> None:
    async with (
        header_deadline_gateway(settings, 0.3) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client,
    ):
        first = await client.get("/")
        second = await client.get("/models")
    assert first.status_code == 200
    assert second.status_code == 200


def test_build_server_applies_the_header_deadline() -> None:
    server = build_server(GatewaySettings(header_timeout=3.5))
    server.config.load()
    protocol = server.config.http_protocol_class
    assert getattr(protocol, "header_timeout", None) == 3.5
