"""Blob downloads from upstream registries into the store: resumable, verified, single-flight.

Each blob streams (chunked reads, never whole in memory) into the BlobStore's `<hex>.incomplete`
file, resuming with `Range: bytes=<partial size>-` when a partial exists; the store hashes while
writing and renames only a blob whose digest and size match, so a corrupt or short download never
becomes visible. A network failure keeps the partial, and the next try (bounded retries here, or a
later pull) continues from it. Two pulls that need the same digest share one download: the second
joins the first's flight and receives its progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from services.registry.config import RemoteSettings
from services.registry.errors import DigestMismatch, RemoteDigestMismatch, RemoteProtocolError
from services.registry.oci import RepositorySession, retrying, unavailable_on_transport
from services.registry.progress import ProgressSink
from services.registry.store.blobs import BlobStore
from services.registry.store.manifests import Descriptor

__all__ = ["BlobDownloader"]

_log = logging.getLogger(__name__)


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
    """Owns the in-flight downloads (at most one per digest)."""

    def __init__(self, blobs: BlobStore, settings: RemoteSettings) -> None:
        self._blobs = blobs
        self._settings = settings
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

    async def _download(
        self,
        session: RepositorySession,
        descriptor: Descriptor,
        report: Callable[[int], Awaitable[None]],
    ) -> None:
        if await self._blobs.has(descriptor.digest):
            await report(descriptor.size)
            return
        async with unavailable_on_transport(session.endpoint):
            async for attempt in retrying(self._settings):
                with attempt:
                    await self._attempt(session, descriptor, report)

    async def _attempt(
        self,
        session: RepositorySession,
        descriptor: Descriptor,
        report: Callable[[int], Awaitable[None]],
    ) -> None:
        digest, size = descriptor.digest, descriptor.size
        offset = await self._blobs.incomplete_size(digest)
        if offset >= size:
            # Cannot be a proper prefix of the blob: start over.
            offset = 0
        async with session.open_blob(digest, offset) as response:
            resume = True
            if offset and response.status_code == 206:
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    raise RemoteProtocolError(
                        f"blob {digest}: asked for bytes {offset}-, got {content_range!r}"
                    )
            elif response.status_code == 200:
                # The registry ignored the Range (or there was none): the partial restarts.
                resume = offset == 0
                offset = 0
            else:
                raise RemoteProtocolError(
                    f"blob {digest}: unexpected status {response.status_code}"
                )
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

    async def _chunks(
        self,
        response: httpx.Response,
        digest: str,
        start: int,
        size: int,
        report: Callable[[int], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        done = start
        async for data in response.aiter_bytes(self._settings.transfer_chunk_bytes):
            done += len(data)
            if done > size:
                raise RemoteDigestMismatch(digest, f"more than the {size} bytes announced")
            yield data
            await report(done)
