"""Content-addressed blob store: `<root>/blobs/<alg>/<hex>`.

Every digest is validated (algorithm and hex length) before it becomes a path, so a digest such as
`sha256:../../etc/passwd` never reaches the filesystem. Writes go to `<hex>.incomplete`, are hashed
while written, verified, fsynced and only then renamed into place: a crash or a bad source leaves at
most an `.incomplete` file, never a blob with the wrong content. Files that are not `<hex>` names
(partials, temp files, strays) are never reported as blobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from services.common.digest import InvalidDigest, parse_digest
from services.registry.errors import (
    BlobNotFound,
    DigestMismatch,
    InvalidArgument,
    OffsetOutOfRange,
    StoreCorrupt,
)

__all__ = ["INCOMPLETE_SUFFIX", "BlobReader", "BlobStore"]

INCOMPLETE_SUFFIX = ".incomplete"
# How much a write may run ahead of the disk before writeback is started (see write_stream).
_WRITEBACK_BYTES = 64 * 1024 * 1024

_log = logging.getLogger(__name__)


def _validated(digest: str) -> tuple[str, str]:
    try:
        return parse_digest(digest)
    except InvalidDigest as exc:
        raise InvalidArgument(str(exc)) from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_and_write(
    loop: asyncio.AbstractEventLoop,
    hasher: hashlib._Hash,
    write: Callable[[BinaryIO, bytes], object],
    handle: BinaryIO,
    data: bytes,
) -> asyncio.Future[None]:
    """Hash `data` and `write` it in two threads at once (hashlib and file writes release the
    GIL); the future settles when both have finished, with the first error.

    Bare executor futures rather than to_thread tasks: no task cancellation (at loop shutdown,
    say) can mark them done while a thread still writes.
    """
    jobs = (
        loop.run_in_executor(None, hasher.update, data),
        loop.run_in_executor(None, write, handle, data),
    )
    both: asyncio.Future[None] = loop.create_future()

    def settle(_: asyncio.Future[Any]) -> None:
        if both.done() or not all(job.done() for job in jobs):
            return
        errors = [asyncio.CancelledError() if job.cancelled() else job.exception() for job in jobs]
        error = next((error for error in errors if error is not None), None)
        if error is not None:
            both.set_exception(error)
        else:
            both.set_result(None)

    for job in jobs:
        job.add_done_callback(settle)
    return both


async def _settled(write: asyncio.Future[None] | None) -> None:
    """Wait until the thread behind `write` has finished, however often we are cancelled.

    Its outcome is dropped: a write error already propagated, or another error is on its way out.
    A cancellation received while waiting is re-raised once the thread is done.
    """
    if write is None:
        return
    cancelled = False
    while not write.done():
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # Only this task holds `write` and it never cancels it: the cancellation is ours.
            cancelled = True
        except Exception:  # dropped, see above
            break
    if not write.cancelled():
        write.exception()
    if cancelled:
        raise asyncio.CancelledError


@dataclass
class BlobReader:
    """An open blob positioned at an offset; `size` is the whole blob's size."""

    digest: str
    size: int
    offset: int
    _handle: BinaryIO

    async def chunks(self, chunk_bytes: int) -> AsyncIterator[bytes]:
        """Yield the rest of the blob, at most `chunk_bytes` per chunk, one thread hop each."""
        while True:
            data = await asyncio.to_thread(self._handle.read, chunk_bytes)
            if not data:
                return
            self.offset += len(data)
            yield data


class _DigestLocks:
    """One asyncio.Lock per digest, dropped when nobody holds or waits for it (bounded)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, digest: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(digest, (asyncio.Lock(), 0))
        self._locks[digest] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[digest]
            if users <= 1:
                del self._locks[digest]
            else:
                self._locks[digest] = (lock, users - 1)


class BlobStore:
    """The `blobs/` tree of the image layout. All blocking I/O runs in worker threads."""

    def __init__(self, root: Path, *, io_chunk_bytes: int) -> None:
        self._root = root
        self._io_chunk_bytes = io_chunk_bytes
        self._locks = _DigestLocks()

    def path(self, digest: str) -> Path:
        """The blob's path; raises InvalidArgument for a malformed digest before any I/O."""
        algorithm, encoded = _validated(digest)
        return self._root / "blobs" / algorithm / encoded

    def _incomplete_path(self, digest: str) -> Path:
        target = self.path(digest)
        return target.with_name(target.name + INCOMPLETE_SUFFIX)

    def lock(self, digest: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Serializes writers and deleters of one digest (they share `<hex>.incomplete`)."""
        self.path(digest)
        return self._locks.hold(digest)

    async def initialize(self) -> None:
        await asyncio.to_thread(
            (self._root / "blobs" / "sha256").mkdir, parents=True, exist_ok=True
        )

    async def has(self, digest: str) -> bool:
        return await asyncio.to_thread(self.path(digest).is_file)

    async def size(self, digest: str) -> int:
        path = self.path(digest)
        try:
            stat = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        return stat.st_size

    async def delete(self, digest: str) -> bool:
        """Remove the blob; False when it was not there."""
        path = self.path(digest)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True

    async def read_bytes(self, digest: str, *, limit: int) -> bytes:
        """A whole small blob (manifest, config), verified against its digest."""
        path = self.path(digest)
        return await asyncio.to_thread(self._read_verified, path, digest, limit)

    @staticmethod
    def _read_verified(path: Path, digest: str, limit: int) -> bytes:
        try:
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        if len(data) > limit:
            raise InvalidArgument(f"blob {digest} is larger than the {limit}-byte metadata limit")
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise StoreCorrupt(f"blob {digest} is corrupt: its content hashes to {actual}")
        return data

    async def write_bytes(self, data: bytes) -> str:
        """Store a small blob; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        async def one_chunk() -> AsyncIterator[bytes]:
            yield data

        await self.write_stream(digest, one_chunk(), expected_size=len(data))
        return digest

    async def write_file(self, digest: str, source: Path) -> int:
        """Copy `source` in as blob `digest`, verifying while copying; returns the blob size."""
        self.path(digest)
        handle = await asyncio.to_thread(source.open, "rb")
        try:
            return await self.write_stream(digest, self._file_chunks(handle))
        finally:
            await asyncio.to_thread(handle.close)

    async def adopt_file(self, digest: str, source: Path) -> int:
        """Move `source` in as blob `digest` by renaming it; returns the blob size.

        For files the registry wrote itself on the store's filesystem and hashed while writing
        (uploads): a rename instead of a second copy and hash of a file that may be many GiB.
        When the blob already exists `source` is left where it is, for its owner to remove.
        """
        target = self.path(digest)
        async with self.lock(digest):
            if await asyncio.to_thread(target.is_file):
                return (await asyncio.to_thread(target.stat)).st_size
            try:
                return await asyncio.to_thread(self._adopt, source, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        # blobs/ is a mount of its own: copy (and verify) instead.
        return await self.write_file(digest, source)

    @staticmethod
    def _adopt(source: Path, target: Path) -> int:
        with source.open("rb") as handle:
            os.fsync(handle.fileno())
            size = os.fstat(handle.fileno()).st_size
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        _fsync_dir(target.parent)
        return size

    async def _file_chunks(self, handle: BinaryIO) -> AsyncIterator[bytes]:
        while data := await asyncio.to_thread(handle.read, self._io_chunk_bytes):
            yield data

    async def hash_file(self, source: Path) -> tuple[str, int]:
        """(digest, size) of a file outside the store, hashed chunk by chunk (cancellable)."""
        hasher = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(source.open, "rb")
        try:
            while count := await asyncio.to_thread(self._read_into, handle, hasher):
                size += count
        finally:
            await asyncio.to_thread(handle.close)
        return "sha256:" + hasher.hexdigest(), size

    async def write_stream(
        self,
        digest: str,
        chunks: AsyncIterable[bytes],
        *,
        expected_size: int | None = None,
        resume: bool = False,
    ) -> int:
        """Write `chunks` as blob `digest`: `.incomplete`, hash, verify, fsync, rename.

        With `resume`, bytes already in `<hex>.incomplete` are kept (and re-hashed) and `chunks`
        must continue from `incomplete_size()`. Without it the partial file starts empty. On a
        digest or size mismatch nothing is left behind; on cancellation or a source error the
        partial file is kept only when resuming.
        """
        target = self.path(digest)
        async with self.lock(digest):
            if await asyncio.to_thread(target.is_file):
                return (await asyncio.to_thread(target.stat)).st_size
            partial = self._incomplete_path(digest)
            await asyncio.to_thread(partial.parent.mkdir, parents=True, exist_ok=True)
            hasher = hashlib.sha256()
            handle = await asyncio.to_thread(self._open_partial, partial, hasher, resume)
            keep_partial = resume
            loop = asyncio.get_running_loop()
            # Pipeline of depth one: chunk N is hashed and written (in two threads at once) while
            # chunk N+1 is read from the source. Only one chunk is ever in flight, so order is
            # kept and memory is bounded to about two chunks.
            in_flight: asyncio.Future[None] | None = None
            # Every _WRITEBACK_BYTES, the disk starts writing what is there while the download
            # goes on, so the fsync before the commit finds little left to write.
            writeback: asyncio.Future[None] | None = None
            try:
                written = handle.tell()
                synced = written
                async for data in chunks:
                    if in_flight is not None:
                        # Shielded: the threads cannot be cancelled, so neither may their future.
                        await asyncio.shield(in_flight)
                    in_flight = _hash_and_write(loop, hasher, self._write_chunk, handle, data)
                    written += len(data)
                    if written - synced >= _WRITEBACK_BYTES and (
                        writeback is None or writeback.done()
                    ):
                        if writeback is not None:
                            await writeback
                        writeback = loop.run_in_executor(None, os.fdatasync, handle.fileno())
                        synced = written
                if in_flight is not None:
                    await asyncio.shield(in_flight)
                if writeback is not None:
                    await asyncio.shield(writeback)
                await asyncio.to_thread(self._flush, handle)
                actual = "sha256:" + hasher.hexdigest()
                if actual != digest or (expected_size is not None and written != expected_size):
                    keep_partial = False
                    raise DigestMismatch(digest, actual)
                await asyncio.to_thread(self._commit, partial, target)
                keep_partial = True
                return written
            finally:
                try:
                    # The handle must outlive a write still running in its thread, even when
                    # this task was cancelled or the source failed.
                    await _settled(in_flight)
                    await _settled(writeback)
                finally:
                    try:
                        handle.close()
                    finally:
                        if not keep_partial:
                            partial.unlink(missing_ok=True)

    def _read_into(self, handle: BinaryIO, hasher: hashlib._Hash) -> int:
        data = handle.read(self._io_chunk_bytes)
        hasher.update(data)
        return len(data)

    @staticmethod
    def _write_chunk(handle: BinaryIO, data: bytes) -> None:
        handle.write(data)

    def _open_partial(self, partial: Path, hasher: hashlib._Hash, resume: bool) -> BinaryIO:
        if not resume:
            return partial.open("wb")
        handle = partial.open("ab+")
        handle.seek(0)
        while data := handle.read(self._io_chunk_bytes):
            hasher.update(data)
        return handle

    @staticmethod
    def _flush(handle: BinaryIO) -> None:
        handle.flush()
        os.fsync(handle.fileno())

    @staticmethod
    def _commit(partial: Path, target: Path) -> None:
        os.replace(partial, target)
        _fsync_dir(target.parent)

    async def incomplete_size(self, digest: str) -> int:
        """Bytes of an interrupted write of `digest` (0 when none), for resuming."""
        partial = self._incomplete_path(digest)
        try:
            return (await asyncio.to_thread(partial.stat)).st_size
        except FileNotFoundError:
            return 0

    @contextlib.asynccontextmanager
    async def open(self, digest: str, offset: int = 0) -> AsyncIterator[BlobReader]:
        """Open a blob for streaming from `offset` (0 <= offset <= size)."""
        path = self.path(digest)
        if offset < 0:
            raise InvalidArgument(f"offset must not be negative, got {offset}")
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        try:
            # The size of the open file, so a concurrent delete cannot change what we stream.
            size = (await asyncio.to_thread(os.fstat, handle.fileno())).st_size
            if offset > size:
                raise OffsetOutOfRange(digest, offset, size)
            await asyncio.to_thread(handle.seek, offset)
            yield BlobReader(digest=digest, size=size, offset=offset, _handle=handle)
        finally:
            # Synchronous: this also runs when a cancelled stream is torn down.
            handle.close()

    def digests(self) -> Iterator[str]:
        """Every complete blob in the store (blocking; call through asyncio.to_thread)."""
        base = self._root / "blobs"
        if not base.is_dir():
            return
        for algorithm_dir in sorted(base.iterdir()):
            if not algorithm_dir.is_dir():
                continue
            for entry in sorted(algorithm_dir.iterdir()):
                candidate = f"{algorithm_dir.name}:{entry.name}"
                try:
                    parse_digest(candidate)
                except InvalidDigest:
                    continue
                if entry.is_file():
                    yield candidate

    async def disk_usage(self) -> tuple[int, int]:
        """(bytes of complete blobs, bytes of partial downloads)."""
        return await asyncio.to_thread(self._disk_usage)

    def _disk_usage(self) -> tuple[int, int]:
        complete = partial = 0
        base = self._root / "blobs"
        if not base.is_dir():
            return 0, 0
        for entry in base.glob("*/*"):
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue
            if entry.name.endswith(INCOMPLETE_SUFFIX):
                partial += size
            else:
                complete += size
        return complete, partial

    async def remove_stale_incomplete(self, *, older_than: float, now: float) -> list[Path]:
        """Delete partial files last modified before `now - older_than` (DMR does this at start)."""
        return await asyncio.to_thread(self._remove_stale, now - older_than)

    def _remove_stale(self, cutoff: float) -> list[Path]:
        removed: list[Path] = []
        base = self._root / "blobs"
        if not base.is_dir():
            return removed
        for partial in base.glob(f"*/*{INCOMPLETE_SUFFIX}"):
            try:
                if partial.stat().st_mtime < cutoff:
                    partial.unlink()
                    removed.append(partial)
            except FileNotFoundError:
                continue
        if removed:
            _log.info("removed %d stale partial blob(s)", len(removed))
        return removed
