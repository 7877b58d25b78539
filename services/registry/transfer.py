"""Blob downloads from upstream registries into the store: resumable, verified, single-flight.

Each blob streams (chunked reads, never whole in memory) into the BlobStore's `<hex>.incomplete`
file, resuming with `Range: bytes=<partial size>-` when a partial exists; the store hashes while
writing and renames only a blob whose digest and size match, so a corrupt or short download never
becomes visible. A network failure keeps the partial, and the next try (bounded retries here, or a
later pull) continues from it. Two pulls that need the same digest share one download: the second
joins the first's flight and receives its progress.

Blob bodies are read with aiohttp, not the httpx client the rest of the registry uses: httpx's
async stream reads the socket 64 KiB at a time through httpcore, h11 and anyio, which held a pull
to ~0.2x a plain GET (docs/benchmarks.md), while aiohttp parses in C and hands over everything
buffered at once (up to about twice REGISTRY_TRANSFER_CHUNK_BYTES). The request side stays the
session's: it builds the URL, supplies the Authorization and answers a 401's challenge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import httpx

from services.registry.config import RemoteSettings
from services.registry.errors import (
    DigestMismatch,
    RemoteDigestMismatch,
    RemoteProtocolError,
    Unauthenticated,
)
from services.registry.oci import (
    ConnectionFailure,
    RepositorySession,
    check_status,
    error_detail,
    retrying,
    unavailable_on_transport,
)
from services.registry.progress import ProgressSink
from services.registry.store.blobs import BlobStore
from services.registry.store.manifests import Descriptor

__all__ = ["BlobClient", "BlobDownloader", "BlobResponse"]

_log = logging.getLogger(__name__)

# An error answer's body is read this far for its OCI error code; the rest is dropped.
_ERROR_BODY_BYTES = 64 * 1024


@contextlib.contextmanager
def _network_errors(what: str) -> Iterator[None]:
    """aiohttp's failures in the registry's terms: network ones are retried, the rest are not."""
    try:
        yield
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        # Timeouts are ClientConnectionErrors too (ServerTimeoutError).
        raise ConnectionFailure(f"{type(exc).__name__}: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise RemoteProtocolError(f"{what}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class BlobResponse:
    """A successful (2xx) answer to a blob GET, its body not yet read."""

    status: int
    content_range: str
    _content: aiohttp.StreamReader
    _what: str

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, each chunk all that is buffered (never the whole body)."""
        with _network_errors(self._what):
            while data := await self._content.readany():
                yield data


class BlobClient:
    """Streamed blob GETs on one aiohttp session, shared by every download of the registry."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    @classmethod
    def create(cls, settings: RemoteSettings) -> BlobClient:
        """A client with the timeouts, pool size and TLS trust of the registry's httpx client."""
        timeout = aiohttp.ClientTimeout(
            # No bound on a whole transfer (a blob may be many GiB); a stall is bounded by
            # sock_read, and each try by the retries.
            total=None,
            # Waiting for a pooled connection plus connecting, as httpx's pool + connect.
            connect=settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        connector = aiohttp.TCPConnector(
            limit=4 * (settings.pull_concurrency + 1),
            # httpx's context: the same CA bundle (certifi, or SSL_CERT_FILE/SSL_CERT_DIR) and
            # verification for both clients.
            ssl=httpx.create_ssl_context(),
        )
        return cls(
            aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                headers={"User-Agent": "model-runner-registry", "Accept-Encoding": "identity"},
                # The digest is over the bytes as stored: never let a transfer encoding in.
                auto_decompress=False,
                # Proxies from HTTP(S)_PROXY/NO_PROXY, as httpx (aiohttp also reads ~/.netrc,
                # which httpx does not). Redirects are followed, and aiohttp drops Authorization
                # when one leaves the registry's origin.
                trust_env=True,
                cookie_jar=aiohttp.DummyCookieJar(),
                # aiohttp pauses the socket at twice this much unread body.
                read_bufsize=settings.transfer_chunk_bytes,
            )
        )

    @property
    def closed(self) -> bool:
        return self._http.closed

    async def close(self) -> None:
        await self._http.close()

    @contextlib.asynccontextmanager
    async def open(
        self, session: RepositorySession, digest: str, offset: int
    ) -> AsyncIterator[BlobResponse]:
        """A GET of `digest` from `offset` (Range) with the session's auth, answering one 401
        challenge through the session; the caller retries and checks 200 vs 206."""
        what = f"blob {digest}"
        url = session.url(f"blobs/{digest}")
        ranged = {"Range": f"bytes={offset}-"} if offset else {}
        for _ in range(2):
            with _network_errors(what):
                response = await self._http.get(url, headers={**ranged, **session.auth_headers()})
            async with response:
                if response.status == 401:
                    await session.authenticate(response.headers.get("WWW-Authenticate", ""))
                    continue
                if response.status == 416:
                    raise RemoteProtocolError(f"{what}: range {offset}- not satisfiable")
                if response.status >= 300:
                    with _network_errors(what):
                        body = await response.content.read(_ERROR_BODY_BYTES)
                    check_status(
                        response.status,
                        what,
                        error_detail(body, response.reason or str(response.status)),
                    )
                    raise RemoteProtocolError(f"{what}: unexpected status {response.status}")
                yield BlobResponse(
                    response.status,
                    response.headers.get("Content-Range", ""),
                    response.content,
                    what,
                )
                return
        raise Unauthenticated(f"{session.endpoint.registry} keeps refusing {what}")


@dataclass
class _Flight:
    digest: str
    listeners: list[ProgressSink] = field(default_factory=list)
    current: int = 0
    users: int = 0
    task: asyncio.Task[None] | None = None

    async def report(self, current: int) -> None:
        self.current = current
        for sink in list(self.listeners):
            await sink(self.digest, current)


class BlobDownloader:
    """Owns the in-flight downloads (at most one per digest).

    `client` is the registry's shared BlobClient (its owner closes it); without one, each download
    opens and closes a client of its own.
    """

    def __init__(
        self, blobs: BlobStore, settings: RemoteSettings, client: BlobClient | None = None
    ) -> None:
        self._blobs = blobs
        self._settings = settings
        self._client = client
        self._flights: dict[str, _Flight] = {}

    async def fetch(
        self, session: RepositorySession, descriptor: Descriptor, sink: ProgressSink
    ) -> None:
        """Make `descriptor`'s blob present in the store, reporting bytes done to `sink`."""
        digest = descriptor.digest
        flight = self._flights.get(digest)
        if flight is None:
            flight = _Flight(digest)
            flight.task = asyncio.create_task(
                self._download(session, descriptor, flight.report), name=f"download {digest}"
            )
            self._flights[digest] = flight
            flight.task.add_done_callback(lambda _: self._forget(flight))
        elif flight.current:
            await sink(digest, flight.current)
        assert flight.task is not None
        flight.listeners.append(sink)
        flight.users += 1
        try:
            await asyncio.shield(flight.task)
        finally:
            flight.listeners.remove(sink)
            flight.users -= 1
            if flight.users == 0 and not flight.task.done():
                # Nobody wants it any more; the partial file stays for a later resume.
                flight.task.cancel()
                await asyncio.wait([flight.task])

    def _forget(self, flight: _Flight) -> None:
        if self._flights.get(flight.digest) is flight:
            del self._flights[flight.digest]

    @contextlib.asynccontextmanager
    async def _client_for_download(self) -> AsyncIterator[BlobClient]:
        if self._client is not None:
            yield self._client
            return
        client = BlobClient.create(self._settings)
        try:
            yield client
        finally:
            await client.close()

    async def _download(
        self,
        session: RepositorySession,
        descriptor: Descriptor,
        report: Callable[[int], Awaitable[None]],
    ) -> None:
        if await self._blobs.has(descriptor.digest):
            await report(descriptor.size)
            return
        async with (
            self._client_for_download() as client,
            unavailable_on_transport(session.endpoint),
        ):
            async for attempt in retrying(self._settings):
                with attempt:
                    await self._attempt(client, session, descriptor, report)

    async def _attempt(
        self,
        client: BlobClient,
        session: RepositorySession,
        descriptor: Descriptor,
        report: Callable[[int], Awaitable[None]],
    ) -> None:
        digest, size = descriptor.digest, descriptor.size
        offset = await self._blobs.incomplete_size(digest)
        if offset >= size:
            # Cannot be a proper prefix of the blob: start over.
            offset = 0
        async with client.open(session, digest, offset) as response:
            resume = True
            if offset and response.status == 206:
                if not response.content_range.startswith(f"bytes {offset}-"):
                    raise RemoteProtocolError(
                        f"blob {digest}: asked for bytes {offset}-, got {response.content_range!r}"
                    )
            elif response.status == 200:
                # The registry ignored the Range (or there was none): the partial restarts.
                resume = offset == 0
                offset = 0
            else:
                raise RemoteProtocolError(f"blob {digest}: unexpected status {response.status}")
            if offset:
                _log.info("resuming %s at byte %d of %d", digest, offset, size)
            await report(offset)
            try:
                await self._blobs.write_stream(
                    digest,
                    self._chunks(response, digest, offset, size, report),
                    expected_size=size,
                    resume=resume,
                )
            except DigestMismatch as exc:
                raise RemoteDigestMismatch(exc.expected, exc.actual) from exc
        await report(size)

    @staticmethod
    async def _chunks(
        response: BlobResponse,
        digest: str,
        start: int,
        size: int,
        report: Callable[[int], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        done = start
        async for data in response.chunks():
            done += len(data)
            if done > size:
                raise RemoteDigestMismatch(digest, f"more than the {size} bytes announced")
            yield data
            await report(done)
