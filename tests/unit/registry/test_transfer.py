"""Blob downloads (BlobDownloader over BlobClient) against a stand-in registry on loopback:
Range resume and its 200/206 answers, size and digest bounds, retries of a cut or stalled body,
auth challenges answered through the session, redirects, and error mapping."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from services.common.clock import SystemClock
from services.registry.app import build_registry
from services.registry.config import RegistrySettings, RemoteSettings
from services.registry.credentials import Credentials
from services.registry.errors import (
    InvalidArgument,
    RegistryUnavailable,
    RemoteDigestMismatch,
    RemoteNotFound,
    RemoteProtocolError,
    Unauthenticated,
)
from services.registry.model_store import ModelStore
from services.registry.oci import RepositorySession, resolve_endpoint
from services.registry.store.blobs import INCOMPLETE_SUFFIX
from services.registry.store.manifests import Descriptor
from services.registry.transfer import BlobClient, BlobDownloader

from .conftest import open_store
from .upstream import Handler, port_of, refused_port, serve

_KIB = 1024
DATA = os.urandom(300 * _KIB)
BLOB = Descriptor(
    media_type="application/octet-stream",
    digest="sha256:" + hashlib.sha256(DATA).hexdigest(),
    size=len(DATA),
)


@dataclass
class Seen:
    """What the stand-in registry was asked: one (path, headers) per request."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def record(self, request: web.Request) -> None:
        self.requests.append((request.path, dict(request.headers)))

    def header(self, name: str) -> list[str]:
        return [headers.get(name, "") for _, headers in self.requests]


def settings(**overrides: object) -> RemoteSettings:
    values: dict[str, object] = {
        "attempts": 2,
        "retry_initial_wait": 0.0,
        "retry_max_wait": 0.0,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        # Small reads, so that a 300 KiB blob arrives in several chunks.
        "transfer_chunk_bytes": 16 * _KIB,
        **overrides,
    }
    return RemoteSettings(**values)  # type: ignore[arg-type]


def full(request: web.Request) -> web.Response:
    return web.Response(body=DATA)


def ranged(request: web.Request) -> web.Response:
    """Honours `Range: bytes=N-` with a 206, as distribution does."""
    header = request.headers.get("Range", "")
    if not header:
        return full(request)
    start = int(header.removeprefix("bytes=").removesuffix("-"))
    return web.Response(
        status=206,
        body=DATA[start:],
        headers={"Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"},
    )


@pytest.fixture
async def target(tmp_path: Path) -> ModelStore:
    return await open_store(tmp_path / "target")


def write_partial(store: ModelStore, data: bytes) -> Path:
    path = store.blobs.path(BLOB.digest)
    partial = path.with_name(path.name + INCOMPLETE_SUFFIX)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data)
    return partial


@dataclass
class Download:
    store: ModelStore
    remote: RemoteSettings
    credentials: Credentials = field(default_factory=Credentials)
    progress: list[int] = field(default_factory=list)

    async def run(self, port: int, *, shared_client: bool = True) -> None:
        async def sink(_digest: str, current: int) -> None:
            self.progress.append(current)

        client = BlobClient.create(self.remote) if shared_client else None
        try:
            async with httpx.AsyncClient() as http:
                endpoint = resolve_endpoint(f"127.0.0.1:{port}", self.remote)
                session = RepositorySession(http, self.remote, endpoint, "ai/x", self.credentials)
                downloader = BlobDownloader(self.store.blobs, self.remote, client)
                await downloader.fetch(session, BLOB, sink)
        finally:
            if client is not None:
                await client.close()

    def stored(self) -> bytes:
        return self.store.blobs.path(BLOB.digest).read_bytes()

    async def partial(self) -> int:
        return await self.store.blobs.incomplete_size(BLOB.digest)


def recording(seen: Seen, handler: Handler) -> Handler:
    async def record(request: web.Request) -> web.StreamResponse:
        seen.record(request)
        return await handler(request)

    return record


def answer(respond: Callable[[web.Request], web.StreamResponse]) -> Handler:
    """A synchronous responder as a handler."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return respond(request)

    return handle


@pytest.mark.parametrize("shared_client", [True, False])
async def test_a_partial_blob_resumes_with_a_range_request(
    target: ModelStore, shared_client: bool
) -> None:
    write_partial(target, DATA[: 100 * _KIB])
    seen = Seen()
    download = Download(target, settings())
    async with serve(recording(seen, answer(ranged))) as (port,):
        await download.run(port, shared_client=shared_client)
    assert download.stored() == DATA
    assert await download.partial() == 0
    assert seen.header("Range") == [f"bytes={100 * _KIB}-"]
    # The digest is over the stored bytes: no transfer encoding may be negotiated.
    assert seen.header("Accept-Encoding") == ["identity"]
    assert download.progress[0] == 100 * _KIB
    assert download.progress[-1] == len(DATA)
    assert download.progress == sorted(download.progress)
    assert len(download.progress) > 3, "progress arrives chunk by chunk"


async def test_a_registry_that_ignores_the_range_restarts_the_blob(target: ModelStore) -> None:
    # Not a prefix of the blob: kept, it would fail the digest.
    write_partial(target, b"x" * (100 * _KIB))
    seen = Seen()
    download = Download(target, settings())
    async with serve(recording(seen, answer(full))) as (port,):
        await download.run(port)
    assert download.stored() == DATA
    assert seen.header("Range") == [f"bytes={100 * _KIB}-"]
    assert download.progress[0] == 0, "the partial was dropped, not resumed"


async def test_a_wrong_content_range_is_refused(target: ModelStore) -> None:
    write_partial(target, DATA[: 100 * _KIB])

    def elsewhere(request: web.Request) -> web.Response:
        return web.Response(
            status=206, body=DATA, headers={"Content-Range": f"bytes 0-{len(DATA) - 1}/*"}
        )

    download = Download(target, settings())
    async with serve(answer(elsewhere)) as (port,):
        with pytest.raises(RemoteProtocolError, match=r"asked for bytes 102400-"):
            await download.run(port)
    assert not await target.blobs.has(BLOB.digest)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (DATA + b"more", "more than the"),
        (DATA[:-1] + b"!", "hashes to|sha256:"),
        (DATA[:-1], "sha256:"),
    ],
    ids=["longer", "tampered", "shorter"],
)
async def test_a_body_that_is_not_the_blob_never_lands(
    target: ModelStore, body: bytes, error: str
) -> None:
    def wrong(request: web.Request) -> web.Response:
        return web.Response(body=body)

    download = Download(target, settings())
    async with serve(answer(wrong)) as (port,):
        with pytest.raises(RemoteDigestMismatch, match=error):
            await download.run(port)
    assert not await target.blobs.has(BLOB.digest)


async def test_a_cut_body_is_retried_from_where_it_stopped(target: ModelStore) -> None:
    seen = Seen()
    cut_at = 200 * _KIB

    async def cut_once(request: web.Request) -> web.StreamResponse:
        if len(seen.requests) > 1:
            return ranged(request)
        response = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await response.prepare(request)
        await response.write(DATA[:cut_at])
        assert request.transport is not None
        # The connection dies mid-body, as when the registry is killed.
        request.transport.abort()
        return response

    download = Download(target, settings(attempts=2))
    async with serve(recording(seen, cut_once)) as (port,):
        await download.run(port)
    assert download.stored() == DATA
    first, second = seen.header("Range")
    assert first == ""
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= cut_at
    assert resumed_at in download.progress


async def test_a_stalled_body_times_out_keeping_the_partial(target: ModelStore) -> None:
    released = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await response.prepare(request)
        await response.write(DATA[: 64 * _KIB])
        await released.wait()
        return response

    download = Download(target, settings(attempts=1, read_timeout=0.3))
    async with serve(stall) as (port,):
        try:
            with pytest.raises(RegistryUnavailable, match="Timeout"):
                await asyncio.wait_for(download.run(port), timeout=10)
        finally:
            released.set()
    assert 0 < await download.partial() <= 64 * _KIB
    assert not await target.blobs.has(BLOB.digest)


class TokenRealm:
    """A registry that wants a Bearer token from its own token endpoint."""

    def __init__(self) -> None:
        self.seen = Seen()
        self.token_requests = 0
        self.port = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            self.token_requests += 1
            return web.json_response({"token": "T-" + request.query["scope"]})
        self.seen.record(request)
        if request.headers.get("Authorization") == "Bearer T-repository:ai/x:pull":
            return full(request)
        challenge = (
            f'Bearer realm="http://127.0.0.1:{self.port}/token",service="reg",'
            'scope="repository:ai/x:pull"'
        )
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})


async def test_a_bearer_challenge_on_the_blob_is_answered_by_the_session(
    target: ModelStore,
) -> None:
    realm = TokenRealm()
    download = Download(target, settings())
    async with serve(realm) as (port,):
        realm.port = port
        await download.run(port)
    assert download.stored() == DATA
    assert realm.seen.header("Authorization") == ["", "Bearer T-repository:ai/x:pull"]
    assert realm.token_requests == 1


async def test_credentials_the_registry_keeps_refusing_are_unauthenticated(
    target: ModelStore,
) -> None:
    realm = TokenRealm()
    download = Download(target, settings(), credentials=Credentials(bearer_token="stale"))
    async with serve(realm) as (port,):
        realm.port = port
        with pytest.raises(Unauthenticated, match="rejected the bearer token"):
            await download.run(port)
    assert realm.seen.header("Authorization") == ["Bearer stale"]
    assert realm.token_requests == 0


async def test_a_redirect_to_another_origin_does_not_carry_the_authorization(
    target: ModelStore,
) -> None:
    seen = Seen()
    ports: list[int] = []

    async def registry_or_cdn(request: web.Request) -> web.StreamResponse:
        seen.record(request)
        registry, cdn = ports
        if port_of(request) == registry:
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{cdn}/cdn/blob")
        return full(request)

    download = Download(target, settings(), credentials=Credentials(bearer_token="secret"))
    async with serve(registry_or_cdn, ports=2) as bound:
        ports.extend(bound)
        await download.run(ports[0])
    assert download.stored() == DATA
    assert [path for path, _ in seen.requests] == [f"/v2/ai/x/blobs/{BLOB.digest}", "/cdn/blob"]
    assert seen.header("Authorization") == ["Bearer secret", ""]


@pytest.mark.parametrize(
    ("status", "error", "tries"),
    [
        (404, RemoteNotFound, 1),
        (403, Unauthenticated, 1),
        (400, InvalidArgument, 1),
        (503, RegistryUnavailable, 3),
    ],
)
async def test_error_answers_map_to_registry_errors_and_only_transient_ones_retry(
    target: ModelStore, status: int, error: type[Exception], tries: int
) -> None:
    seen = Seen()

    def refuse(request: web.Request) -> web.Response:
        return web.json_response(
            {"errors": [{"code": "BLOB_UNKNOWN", "message": "nope"}]}, status=status
        )

    download = Download(target, settings(attempts=3))
    async with serve(recording(seen, answer(refuse))) as (port,):
        with pytest.raises(error) as raised:
            await download.run(port)
    assert "BLOB_UNKNOWN: nope" in str(raised.value)
    assert len(seen.requests) == tries


async def test_an_unreachable_registry_is_unavailable(target: ModelStore) -> None:
    download = Download(target, settings(attempts=2))
    with refused_port() as port, pytest.raises(RegistryUnavailable, match="unreachable"):
        await download.run(port)


async def test_the_registry_app_opens_and_closes_the_shared_blob_client(tmp_path: Path) -> None:
    app = await build_registry(
        RegistrySettings(models_path=tmp_path / "models", listen_address="127.0.0.1:0"),
        clock=SystemClock(),
    )
    assert not app.blob_client.closed
    await app.close()
    assert app.blob_client.closed
    assert app.http.is_closed
