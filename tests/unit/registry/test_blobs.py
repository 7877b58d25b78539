"""The content-addressed blob store: digest validation, verified writes, ranged reads."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

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
