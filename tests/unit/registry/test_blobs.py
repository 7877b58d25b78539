"""The content-addressed blob store: digest validation, verified writes, ranged reads."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import pytest

from services.registry.errors import (
    BlobNotFound,
    DigestMismatch,
    InvalidArgument,
    OffsetOutOfRange,
    StoreCorrupt,
)
from services.registry.store.blobs import BlobStore

from .conftest import stored_files


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.fixture
async def blobs(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path / "root", io_chunk_bytes=7)
    await store.initialize()
    return store


BAD_DIGESTS = [
    "sha256:../../etc/passwd",
    "sha256:../../../../../../tmp/x",
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 62 + "/x",
    "sha256:" + "a" * 63 + "\x00",
    "md5:" + "a" * 32,
    "../sha256:" + "a" * 64,
    "sha256/" + "a" * 64,
    "a" * 64,
    "",
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
async def test_malformed_digests_are_rejected_before_touching_the_filesystem(
    blobs: BlobStore, tmp_path: Path, digest: str
) -> None:
    before = tree(tmp_path)
    with pytest.raises(InvalidArgument):
        blobs.path(digest)
    with pytest.raises(InvalidArgument):
        await blobs.has(digest)
    with pytest.raises(InvalidArgument):
        await blobs.size(digest)
    with pytest.raises(InvalidArgument):
        await blobs.delete(digest)
    with pytest.raises(InvalidArgument):
        await blobs.read_bytes(digest, limit=100)
    with pytest.raises(InvalidArgument):
        await blobs.write_stream(digest, chunks(b"data"))
    with pytest.raises(InvalidArgument):
        async with blobs.open(digest):
            pass
    assert tree(tmp_path) == before


async def test_traversal_digest_cannot_reach_a_file_outside_the_store(
    blobs: BlobStore, tmp_path: Path
) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    with pytest.raises(InvalidArgument):
        await blobs.delete("sha256:../../secret")
    assert outside.read_bytes() == b"secret"


async def test_write_verifies_then_renames_into_place(blobs: BlobStore, tmp_path: Path) -> None:
    data = b"hello, blob store"
    digest = digest_of(data)
    size = await blobs.write_stream(digest, chunks(data[:5], data[5:]))
    assert size == len(data)
    assert await blobs.has(digest)
    assert await blobs.size(digest) == len(data)
    assert blobs.path(digest).read_bytes() == data
    assert stored_files(tmp_path / "root") == [f"sha256/{digest[7:]}"]


async def test_digest_mismatch_leaves_neither_blob_nor_partial(
    blobs: BlobStore, tmp_path: Path
) -> None:
    claimed = digest_of(b"what the client promised")
    with pytest.raises(DigestMismatch):
        await blobs.write_stream(claimed, chunks(b"what ", b"arrived"))
    assert not await blobs.has(claimed)
    assert stored_files(tmp_path / "root") == []
    assert list(blobs.digests()) == []


async def test_size_mismatch_is_rejected(blobs: BlobStore, tmp_path: Path) -> None:
    data = b"abc"
    with pytest.raises(DigestMismatch):
        await blobs.write_stream(digest_of(data), chunks(data), expected_size=4)
    assert stored_files(tmp_path / "root") == []


async def test_failing_source_removes_the_partial_file(blobs: BlobStore, tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"first part"
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        await blobs.write_stream(digest_of(b"first part and more"), broken())
    assert stored_files(tmp_path / "root") == []


async def test_interrupted_resumable_write_keeps_its_partial_and_resumes(
    blobs: BlobStore,
) -> None:
    data = b"0123456789" * 10
    digest = digest_of(data)

    async def interrupted() -> AsyncIterator[bytes]:
        yield data[:40]
        raise ConnectionError("stream broke")

    with pytest.raises(ConnectionError):
        await blobs.write_stream(digest, interrupted(), resume=True)
    assert not await blobs.has(digest)
    assert await blobs.incomplete_size(digest) == 40
    assert digest not in list(blobs.digests())

    await blobs.write_stream(digest, chunks(data[40:]), resume=True, expected_size=len(data))
    assert blobs.path(digest).read_bytes() == data
    assert await blobs.incomplete_size(digest) == 0


async def test_write_file_copies_and_verifies(blobs: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(1000))
    digest, size = await blobs.hash_file(source)
    assert (digest, size) == (digest_of(source.read_bytes()), 1000)
    assert await blobs.write_file(digest, source) == 1000
    assert blobs.path(digest).read_bytes() == source.read_bytes()


async def test_write_file_rejects_a_source_that_changed(blobs: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"version one")
    digest, _ = await blobs.hash_file(source)
    source.write_bytes(b"version two")
    with pytest.raises(DigestMismatch):
        await blobs.write_file(digest, source)
    assert stored_files(tmp_path / "root") == []


async def test_concurrent_writers_of_one_digest_both_succeed(blobs: BlobStore) -> None:
    data = os.urandom(4096)
    digest = digest_of(data)
    parts = [data[i : i + 100] for i in range(0, len(data), 100)]
    sizes = await asyncio.gather(*(blobs.write_stream(digest, chunks(*parts)) for _ in range(4)))
    assert sizes == [len(data)] * 4
    assert blobs.path(digest).read_bytes() == data


async def test_write_bytes_and_read_bytes_round_trip(blobs: BlobStore) -> None:
    digest = await blobs.write_bytes(b'{"a":1}')
    assert digest == digest_of(b'{"a":1}')
    assert await blobs.read_bytes(digest, limit=100) == b'{"a":1}'
    with pytest.raises(InvalidArgument, match="limit"):
        await blobs.read_bytes(digest, limit=3)


async def test_read_bytes_detects_corruption_on_disk(blobs: BlobStore) -> None:
    digest = await blobs.write_bytes(b"original")
    blobs.path(digest).write_bytes(b"tampered")
    with pytest.raises(StoreCorrupt):
        await blobs.read_bytes(digest, limit=100)


async def test_missing_blob(blobs: BlobStore) -> None:
    digest = digest_of(b"never written")
    assert not await blobs.has(digest)
    assert not await blobs.delete(digest)
    with pytest.raises(BlobNotFound):
        await blobs.size(digest)
    with pytest.raises(BlobNotFound):
        async with blobs.open(digest):
            pass


@pytest.mark.parametrize("offset", [0, 1, 9, 50, 99, 100])
async def test_open_streams_from_any_offset(blobs: BlobStore, offset: int) -> None:
    data = bytes(range(100))
    digest = await blobs.write_bytes(data)
    async with blobs.open(digest, offset) as reader:
        assert reader.size == 100
        received = [chunk async for chunk in reader.chunks(9)]
    assert b"".join(received) == data[offset:]
    assert all(len(chunk) <= 9 for chunk in received)


async def test_open_rejects_offsets_outside_the_blob(blobs: BlobStore) -> None:
    digest = await blobs.write_bytes(b"0123456789")
    with pytest.raises(OffsetOutOfRange):
        async with blobs.open(digest, 11):
            pass
    with pytest.raises(InvalidArgument):
        async with blobs.open(digest, -1):
            pass


async def test_digests_lists_only_complete_blobs(blobs: BlobStore, tmp_path: Path) -> None:
    digest = await blobs.write_bytes(b"complete")
    directory = blobs.path(digest).parent
    (directory / ("b" * 64 + ".incomplete")).write_bytes(b"partial")
    (directory / "stray-file").write_bytes(b"?")
    assert list(blobs.digests()) == [digest]


async def test_stale_partials_are_removed_and_fresh_ones_kept(blobs: BlobStore) -> None:
    directory = blobs.path("sha256:" + "a" * 64).parent
    stale = directory / ("a" * 64 + ".incomplete")
    fresh = directory / ("b" * 64 + ".incomplete")
    stale.write_bytes(b"old")
    fresh.write_bytes(b"new")
    os.utime(stale, (1_000, 1_000))
    os.utime(fresh, (9_000, 9_000))
    removed = await blobs.remove_stale_incomplete(older_than=3_600, now=10_000)
    assert removed == [stale]
    assert not stale.exists()
    assert fresh.exists()


# A thread blocked on an event in these tests waits at most this long, so a broken pipeline fails
# a test instead of hanging it.
THREAD_WAIT = 5.0


class GatedWriter:
    """Stands in for `_write_chunk`: each call blocks in its thread until released."""

    def __init__(self, store: BlobStore) -> None:
        self._write = store._write_chunk
        self.started = threading.Event()
        self.release = threading.Event()
        self.errors: list[BaseException] = []
        self.calls = 0

    def __call__(self, handle: BinaryIO, data: bytes) -> None:
        self.calls += 1
        self.started.set()
        self.release.wait(THREAD_WAIT)
        try:
            self._write(handle, data)
        except BaseException as exc:
            self.errors.append(exc)
            raise


async def wait_for_thread(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, THREAD_WAIT)


async def still_running(task: asyncio.Task[int]) -> bool:
    """Whether `task` keeps running over a few loop turns (it should be waiting for a thread)."""
    for _ in range(20):
        await asyncio.sleep(0)
    done, _ = await asyncio.wait({task}, timeout=0.05)
    return not done


@pytest.mark.parametrize("source_blocks", [True, False], ids=["reading", "awaiting-write"])
@pytest.mark.parametrize("resume", [True, False])
async def test_cancel_waits_for_the_write_in_flight_before_closing_the_file(
    blobs: BlobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source_blocks: bool,
    resume: bool,
) -> None:
    data = os.urandom(300)
    digest = digest_of(data)
    writer = GatedWriter(blobs)
    monkeypatch.setattr(blobs, "_write_chunk", writer)
    never = asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        yield data[:100]
        if source_blocks:
            await never.wait()
        yield data[100:200]

    task = asyncio.create_task(blobs.write_stream(digest, source(), resume=resume))
    await wait_for_thread(writer.started)
    task.cancel()
    assert await still_running(task)
    task.cancel()  # a second cancellation must not cut the wait short either
    assert await still_running(task)
    writer.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert writer.errors == []  # no "I/O operation on closed file"
    assert writer.calls == 1
    assert not await blobs.has(digest)
    assert await blobs.incomplete_size(digest) == (100 if resume else 0)
    if not resume:
        assert stored_files(tmp_path / "root") == []
        return
    monkeypatch.undo()
    await blobs.write_stream(digest, chunks(data[100:]), resume=True, expected_size=len(data))
    assert blobs.path(digest).read_bytes() == data


async def test_next_chunk_is_read_while_the_previous_one_is_written(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(300)
    parts = [data[0:100], data[100:200], data[200:300]]
    asked = [threading.Event() for _ in parts]
    overlapped: list[bool] = []
    write = blobs._write_chunk

    def writer(handle: BinaryIO, chunk: bytes) -> None:
        index = parts.index(chunk)
        if index + 1 < len(parts):
            # Holds this write until the source has been asked for the next chunk.
            overlapped.append(asked[index + 1].wait(THREAD_WAIT))
        write(handle, chunk)

    async def source() -> AsyncIterator[bytes]:
        for index, part in enumerate(parts):
            asked[index].set()
            yield part

    monkeypatch.setattr(blobs, "_write_chunk", writer)
    assert await blobs.write_stream(digest_of(data), source(), expected_size=300) == 300
    assert overlapped == [True, True]
    assert blobs.path(digest_of(data)).read_bytes() == data


@pytest.mark.parametrize("failing_chunk", [0, 1, 2])
@pytest.mark.parametrize("resume", [True, False])
async def test_write_error_propagates_and_leaves_no_blob(
    blobs: BlobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failing_chunk: int,
    resume: bool,
) -> None:
    data = os.urandom(300)
    digest = digest_of(data)
    write = blobs._write_chunk
    calls: list[int] = []
    later_chunks_read: list[int] = []

    def writer(handle: BinaryIO, chunk: bytes) -> None:
        calls.append(len(calls))
        if len(calls) - 1 == failing_chunk:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(handle, chunk)

    async def source() -> AsyncIterator[bytes]:
        for index in range(3):
            if index > failing_chunk + 1:
                later_chunks_read.append(index)
            yield data[index * 100 : (index + 1) * 100]

    monkeypatch.setattr(blobs, "_write_chunk", writer)
    with pytest.raises(OSError, match="No space left"):
        await blobs.write_stream(digest, source(), expected_size=300, resume=resume)
    assert calls == list(range(failing_chunk + 1))  # nothing written after the failure
    assert later_chunks_read == []  # at most one chunk read ahead of the failed write
    assert not await blobs.has(digest)
    assert digest not in list(blobs.digests())
    if not resume:
        assert stored_files(tmp_path / "root") == []


async def test_writeback_starts_while_a_long_write_goes_on(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past each writeback step the file is synced in the background (so the fsync before the
    commit has little left), never more than one sync at a time, and the blob still verifies."""
    from services.registry.store import blobs as blobs_module

    monkeypatch.setattr(blobs_module, "_WRITEBACK_BYTES", 250)
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fdatasync(fd)

    monkeypatch.setattr(blobs_module.os, "fdatasync", fdatasync)
    data = os.urandom(1000)

    async def source() -> AsyncIterator[bytes]:
        for start in range(0, 1000, 100):
            yield data[start : start + 100]

    assert await blobs.write_stream(digest_of(data), source(), expected_size=1000) == 1000
    assert 1 <= len(synced) <= 4
    assert blobs.path(digest_of(data)).read_bytes() == data
