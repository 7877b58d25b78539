"""`POST /models/package` (the GGUF streamed to the registry) and `DELETE /models/purge`."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from services.gateway.config import GatewaySettings
from tests.support.processes import free_port, wait_until
from tests.unit.gateway.conftest import Neighbours, asgi_client, live_gateway
from tests.unit.gateway.fakes import MODEL_ID
from tests.unit.gateway.test_inference import error_of

CHUNK = 1000
# Larger than the settings' max_body_bytes (4096): uploads are not bounded by it.
BODY = bytes(range(256)) * 40


@pytest.fixture
def upload_settings(settings: GatewaySettings) -> GatewaySettings:
    return dataclasses.replace(settings, upload_chunk_bytes=CHUNK)


@pytest.fixture
async def uploads(upload_settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(upload_settings) as client:
        yield client


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_upload_is_relayed_in_chunks_and_answers_the_model(
    uploads: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await uploads.post(
        "/models/package",
        params={"tag": "myorg/mine:v1", "context_size": "2048", "filename": "mine.gguf"},
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(BODY)),
            "X-Model-License": base64.b64encode(b"MIT\n").decode(),
            "X-Model-Chat-Template": base64.b64encode(b"{{ x }}").decode(),
        },
        content=_pieces(BODY, 700),
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == MODEL_ID
    assert body["tags"] == ["myorg/mine:v1"]
    assert body["config"]["context_size"] == 2048
    [header] = neighbours.registry.upload_headers
    assert header.tag == "myorg/mine:v1"
    assert header.context_size == 2048
    assert header.gguf_name == "mine.gguf"
    assert header.gguf_size == len(BODY)
    assert header.license == b"MIT\n"
    assert header.chat_template == b"{{ x }}"
    chunks = neighbours.registry.upload_chunks
    assert b"".join(chunks) == BODY
    assert all(len(chunk) == CHUNK for chunk in chunks[:-1])
    assert len(chunks) == -(-len(BODY) // CHUNK)


async def test_upload_without_length_or_extras(
    uploads: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await uploads.post("/models/package?tag=mine", content=_pieces(BODY, 4096))

    assert response.status_code == 201, response.text
    [header] = neighbours.registry.upload_headers
    assert (header.gguf_size, header.license, header.chat_template) == (0, b"", b"")
    assert header.context_size == 0
    assert b"".join(neighbours.registry.upload_chunks) == BODY


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/models/package", {}, 400),
        ("/models/package?tag=%20", {}, 400),
        ("/models/package?tag=x&context_size=-1", {}, 400),
        ("/models/package?tag=x&context_size=big", {}, 400),
        ("/models/package?tag=x&context_size=2147483648", {}, 400),
        ("/models/package?tag=x", {"X-Model-License": "not base64!"}, 400),
        ("/models/package?tag=x", {"X-Model-Chat-Template": "A" * 8000}, 413),
        ("/models/package?tag=x", {"Content-Type": "multipart/form-data; boundary=b"}, 415),
        ("/models/package?tag=x", {"Content-Type": "application/json"}, 415),
    ],
)
async def test_bad_requests_never_reach_the_registry(
    uploads: httpx.AsyncClient,
    neighbours: Neighbours,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    response = await uploads.post(path, headers=headers, content=BODY)

    assert response.status_code == status, response.text
    error_of(response)
    assert neighbours.registry.upload_headers == []


@pytest.mark.parametrize(
    ("code", "after", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 0, 400),
        (grpc.StatusCode.INVALID_ARGUMENT, 3 * CHUNK, 400),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, CHUNK, 413),
        (grpc.StatusCode.FAILED_PRECONDITION, 0, 422),
        (grpc.StatusCode.UNAVAILABLE, 0, 503),
        (grpc.StatusCode.INTERNAL, CHUNK, 502),
    ],
)
async def test_registry_refusals_get_their_status(
    uploads: httpx.AsyncClient,
    neighbours: Neighbours,
    code: grpc.StatusCode,
    after: int,
    status: int,
) -> None:
    neighbours.registry.upload_failure = (code, "the upload is not a GGUF file")
    neighbours.registry.upload_failure_after = after

    response = await uploads.post("/models/package?tag=x", content=_pieces(BODY * 4, 512))

    assert response.status_code == status, response.text
    assert "not a GGUF" in str(error_of(response)["message"])
    assert [m.tags for m in neighbours.registry.models] == [["ai/smollm2:latest"]]


async def test_unreachable_registry_is_503(upload_settings: GatewaySettings) -> None:
    dead = dataclasses.replace(upload_settings, registry_address=f"127.0.0.1:{free_port()}")
    async with asgi_client(dead) as client:
        response = await client.post("/models/package?tag=x", content=BODY)
    assert response.status_code == 503
    error_of(response)


async def test_client_going_away_midway_cancels_the_upload(
    upload_settings: GatewaySettings, neighbours: Neighbours
) -> None:
    async with live_gateway(upload_settings) as url:
        port = int(url.rsplit(":", 1)[1])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /models/package?tag=x HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
        )
        writer.write(BODY)
        await writer.drain()
        await wait_until(
            lambda: len(neighbours.registry.upload_chunks) >= 3, what="the first chunks"
        )

        writer.close()
        await writer.wait_closed()

        await asyncio.wait_for(neighbours.registry.upload_cancelled.wait(), timeout=10)
    assert sum(map(len, neighbours.registry.upload_chunks)) < 1_000_000


async def test_purge_empties_the_store(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    response = await client.delete("/models/purge")

    assert response.status_code == 200, response.text
    assert response.json() == {"deleted_models": 1, "deleted_blobs": 3}
    assert neighbours.registry.purges == 1
    # Every runner goes with the store.
    assert [r.all for r in neighbours.scheduler.unload_requests] == [True]
    # Not taken for `DELETE /models/{name}` of a model named "purge".
    assert neighbours.registry.delete_requests == []
    assert (await client.get("/models")).json() == []


async def test_purge_of_a_foreign_directory_is_409(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.purge_failure = (
        grpc.StatusCode.FAILED_PRECONDITION,
        "/tmp/x has no oci-layout: refusing to purge it",
    )

    response = await client.delete("/models/purge")

    assert response.status_code == 409
    assert "oci-layout" in str(error_of(response)["message"])


async def test_delete_of_a_name_ending_in_purge_is_still_a_delete(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.delete("/models/ai/purge")

    assert response.status_code == 404
    assert neighbours.registry.purges == 0
    assert [r.reference for r in neighbours.registry.delete_requests] == ["ai/purge"]


async def test_post_purge_is_not_an_action(client: httpx.AsyncClient) -> None:
    response = await client.post("/models/purge")

    assert response.status_code == 404
    error_of(response)
