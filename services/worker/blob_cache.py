"""The worker's content-addressed copy of model layers, fetched from the registry over gRPC.

Layout: `WORKER_CACHE_PATH/blobs/<alg>/<hex>`, only ever written by renaming a verified
`<hex>.incomplete` file, so a blob file that exists is a good one (a size check catches
truncation by hand). An interrupted download resumes from the `.incomplete` file's size through
FetchBlob's offset. Concurrent requests for one digest share one download. Hashing and writes run
in a worker thread, one chunk at a time, so the event loop keeps serving tokens meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import grpc

from modelrunner.v1 import registry_pb2
from services.common.digest import blob_path, parse_digest
from services.worker.errors import BlobFetchError, BlobVerificationError
from services.worker.worker_metrics import WorkerMetrics

if TYPE_CHECKING:
    from modelrunner.v1.registry_pb2_grpc import RegistryAsyncStub

__all__ = ["BlobCache", "FetchLimits"]

_log = logging.getLogger(__name__)
_HASH_CHUNK = 1 << 20
# Eviction spares blobs used this recently: a load that fetched them may still be starting.
_RECENT_USE_SECONDS = 600.0


@dataclass(frozen=True)
class FetchLimits:
    # Longest silence allowed between two chunks of a FetchBlob stream.
    idle_timeout: float
    # Deadline of one FetchBlob call (multi-GB blobs need minutes).
    fetch_timeout: float
    # Cache size above which least recently used blobs are deleted; 0: no limit.
    max_bytes: int = 0


def _resume_state(partial: Path, algorithm: str, size: int) -> tuple[int, hashlib._Hash]:
    """Bytes already on disk and a hasher fed with them (runs in a thread)."""
    hasher = hashlib.new(algorithm)
    try:
        existing = partial.stat().st_size
    except FileNotFoundError:
        return 0, hasher
    if existing > size:
        partial.unlink()
        return 0, hasher
    with partial.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            hasher.update(chunk)
    return existing, hasher


def _cached_bytes(root: Path) -> int:
    """Bytes of the verified blobs under `root` (partial downloads excluded)."""
    total = 0
    for path in (root / "blobs").glob("*/*"):
        if path.suffix == ".incomplete":
            continue
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def _append(handle: BinaryIO, hasher: hashlib._Hash, data: bytes) -> None:
    handle.write(data)
    hasher.update(data)


def _seal(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


class BlobCache:
    """Fetches layers on demand; owns its in-flight downloads (close() cancels them)."""

    def __init__(
        self,
        root: Path,
        registry: RegistryAsyncStub,
        limits: FetchLimits,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._root = root
        self._registry = registry
        self._limits = limits
        self._metrics = metrics if metrics is not None else WorkerMetrics()
        self._downloads: dict[str, asyncio.Task[Path]] = {}
        # Kept up to date on every write and eviction: heartbeats report it without walking the
        # tree. Scanned once here: a cache holds a few dozen blobs, so this takes microseconds.
        self._bytes = _cached_bytes(root)

    def size_bytes(self) -> int:
        """Bytes of verified blobs in the cache (WorkerInfo.cache_bytes)."""
        return self._bytes

    def path_for(self, digest: str) -> Path:
        return blob_path(self._root, digest)

    def cached(self, digest: str, size: int) -> bool:
        try:
            return self.path_for(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    async def ensure(self, digest: str, size: int) -> Path:
        """The local path of a verified blob, downloading it first if needed."""
        path = self.path_for(digest)
        if self.cached(digest, size):
            # The modification time orders eviction (least recently used first).
            with contextlib.suppress(OSError):
                os.utime(path)
            return path
        task = self._downloads.get(digest)
        if task is None:
            task = asyncio.create_task(self._download(digest, size), name=f"fetch-{digest[:19]}")
            self._downloads[digest] = task
            task.add_done_callback(lambda done: self._forget(digest, done))
        # Shielded: one caller giving up must not abort the download the others wait for.
        return await asyncio.shield(task)

    def _forget(self, digest: str, task: asyncio.Task[Path]) -> None:
        if self._downloads.get(digest) is task:
            del self._downloads[digest]
        if not task.cancelled() and task.exception() is not None:
            _log.debug("download of %s failed: %s", digest, task.exception())

    async def close(self) -> None:
        tasks = list(self._downloads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _download(self, digest: str, size: int) -> Path:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            path = await self._fetch(digest, size)
        except OSError as exc:
            self._metrics.blob_fetched(None)
            raise BlobFetchError(f"cannot write {digest} to the worker cache: {exc}") from exc
        except Exception:
            self._metrics.blob_fetched(None)
            raise
        self._metrics.blob_fetched(loop.time() - started)
        return path

    async def _fetch(self, digest: str, size: int) -> Path:
        algorithm, encoded = parse_digest(digest)
        path = self.path_for(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(encoded + ".incomplete")
        if path.exists():
            # Wrong size (cached() said so): not something we wrote; fetch it again.
            self._bytes -= path.stat().st_size
            path.unlink()
        offset, hasher = await asyncio.to_thread(_resume_state, partial, algorithm, size)
        if offset:
            _log.info("resuming %s at byte %d of %d", digest, offset, size)
        received = offset
        try:
            with partial.open("ab") as handle:
                if received < size:
                    received = await self._stream(digest, offset, size, handle, hasher)
                await asyncio.to_thread(_seal, handle)
        except BlobVerificationError:
            # Bad bytes are not worth resuming from.
            partial.unlink(missing_ok=True)
            raise
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if received != size or actual != digest:
            partial.unlink(missing_ok=True)
            raise BlobVerificationError(
                f"blob {digest} failed verification: expected {size} bytes, got {received}; "
                f"content digest {actual}"
            )
        partial.replace(path)
        self._bytes += size
        _log.info("cached %s (%d bytes)", digest, size)
        if self._limits.max_bytes:
            self._bytes -= await asyncio.to_thread(self._evict, {digest, *self._downloads})
        return path

    def _evict(self, keep: set[str]) -> int:
        """Delete least recently used blobs until the cache fits in max_bytes (runs in a thread).

        Returns the bytes freed; the event loop owns the running total.

        A blob a running llama-server has open stays readable to it; its space is freed when that
        process exits.
        """
        entries = []
        for path in (self._root / "blobs").glob("*/*"):
            if path.suffix == ".incomplete" or not path.is_file():
                continue
            stat = path.stat()
            entries.append((stat.st_mtime, stat.st_size, f"{path.parent.name}:{path.name}", path))
        total = sum(size for _, size, _, _ in entries)
        freed = 0
        recent = time.time() - _RECENT_USE_SECONDS
        for mtime, size, digest, path in sorted(entries):
            if total <= self._limits.max_bytes:
                return freed
            if digest in keep or mtime > recent:
                continue
            _log.info("evicting %s (%d bytes) from the worker cache", digest, size)
            path.unlink(missing_ok=True)
            total -= size
            freed += size
        if total > self._limits.max_bytes:
            _log.warning(
                "worker cache holds %d bytes, over WORKER_CACHE_MAX_BYTES (%d): every blob is in use",
                total,
                self._limits.max_bytes,
            )
        return freed

    async def _stream(
        self, digest: str, offset: int, size: int, handle: BinaryIO, hasher: hashlib._Hash
    ) -> int:
        received = offset
        call = self._registry.FetchBlob(
            registry_pb2.FetchBlobRequest(digest=digest, offset=offset),
            timeout=self._limits.fetch_timeout,
        )
        try:
            first = True
            while True:
                try:
                    message = await asyncio.wait_for(call.read(), self._limits.idle_timeout)
                except TimeoutError as exc:
                    raise BlobFetchError(
                        f"registry sent nothing for {self._limits.idle_timeout:g}s while "
                        f"fetching {digest} (WORKER_BLOB_IDLE_TIMEOUT)"
                    ) from exc
                if message is grpc.aio.EOF:
                    return received
                assert isinstance(message, registry_pb2.BlobChunk)
                if first and message.total_size and message.total_size != size:
                    raise BlobVerificationError(
                        f"blob {digest}: registry has {message.total_size} bytes, "
                        f"the manifest says {size}"
                    )
                first = False
                if not message.data:
                    continue
                received += len(message.data)
                self._metrics.blob_received(len(message.data))
                if received > size:
                    raise BlobVerificationError(
                        f"blob {digest}: registry sent more than the {size} bytes expected"
                    )
                await asyncio.to_thread(_append, handle, hasher, message.data)
        except grpc.aio.AioRpcError as exc:
            raise BlobFetchError(
                f"fetching {digest} from the registry failed: {exc.code().name}: {exc.details()}"
            ) from exc
        finally:
            call.cancel()

    def __repr__(self) -> str:
        return f"BlobCache({self._root})"
