"""BlobCache against an in-process fake Registry: verify, reuse, resume, reject, share."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelrunner.v1 import registry_pb2_grpc
from services.common.digest import sha256_digest
from services.common.grpc_client import open_channel
from services.worker.blob_cache import BlobCache, FetchLimits
from services.worker.errors import BlobFetchError, BlobVerificationError
from tests.support.processes import free_port
from tests.unit.worker.fake_registry import FakeRegistry, running_registry
from tests.unit.worker.support import eventually

DATA = os.urandom(300 * 1024 + 17)
DIGEST = sha256_digest(DATA)
HEX = DIGEST.removeprefix("sha256:")


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry(blobs={DIGEST: DATA})


@pytest.fixture
async def stub(fake: FakeRegistry) -> AsyncIterator[registry_pb2_grpc.RegistryAsyncStub]:
    async with running_registry(fake) as registry:
        yield registry


@pytest.fixture
async def cache(
    tmp_path: Path, stub: registry_pb2_grpc.RegistryAsyncStub
) -> AsyncIterator[BlobCache]:
    blob_cache = BlobCache(tmp_path, stub, FetchLimits(idle_timeout=5.0, fetch_timeout=30.0))
    yield blob_cache
    await blob_cache.close()


async def test_fetches_verifies_and_reuses(
    cache: BlobCache, fake: FakeRegistry, tmp_path: Path
) -> None:
    path = await cache.ensure(DIGEST, len(DATA))
    assert path == tmp_path / "blobs" / "sha256" / HEX
    assert path.read_bytes() == DATA
    assert not list(path.parent.glob("*.incomplete"))
    assert await cache.ensure(DIGEST, len(DATA)) == path
    assert fake.requests == [(DIGEST, 0)]  # no second download


async def test_resumes_from_a_partial_file(
    cache: BlobCache, fake: FakeRegistry, tmp_path: Path
) -> None:
    partial = tmp_path / "blobs" / "sha256" / f"{HEX}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(DATA[:100_000])
    path = await cache.ensure(DIGEST, len(DATA))
    assert fake.requests == [(DIGEST, 100_000)]
    assert path.read_bytes() == DATA
    assert not partial.exists()


async def test_an_interrupted_download_resumes_on_the_next_call(
    cache: BlobCache, fake: FakeRegistry
) -> None:
    fake.fail_after = 128 * 1024
    with pytest.raises(BlobFetchError, match="UNAVAILABLE"):
        await cache.ensure(DIGEST, len(DATA))
    fake.fail_after = None
    path = await cache.ensure(DIGEST, len(DATA))
    assert path.read_bytes() == DATA
    assert fake.requests == [(DIGEST, 0), (DIGEST, 128 * 1024)]


async def test_digest_mismatch_is_rejected_and_the_partial_deleted(
    cache: BlobCache, fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.served[DIGEST] = DATA[:-1] + bytes([DATA[-1] ^ 0xFF])
    with pytest.raises(BlobVerificationError, match="failed verification"):
        await cache.ensure(DIGEST, len(DATA))
    folder = tmp_path / "blobs" / "sha256"
    assert list(folder.iterdir()) == []


async def test_size_mismatch_is_rejected(cache: BlobCache, fake: FakeRegistry) -> None:
    fake.served[DIGEST] = DATA + b"extra"
    with pytest.raises(BlobVerificationError, match="registry has"):
        await cache.ensure(DIGEST, len(DATA))


async def test_concurrent_fetches_share_one_download(cache: BlobCache, fake: FakeRegistry) -> None:
    fake.gate = asyncio.Event()
    fetches = [asyncio.create_task(cache.ensure(DIGEST, len(DATA))) for _ in range(4)]
    await eventually(lambda: len(fake.requests) == 1, what="the download to start")
    fake.gate.set()
    paths = await asyncio.gather(*fetches)
    assert len(set(paths)) == 1
    assert fake.requests == [(DIGEST, 0)]


async def test_one_caller_giving_up_does_not_abort_the_shared_download(
    cache: BlobCache, fake: FakeRegistry
) -> None:
    fake.gate = asyncio.Event()
    impatient = asyncio.create_task(cache.ensure(DIGEST, len(DATA)))
    patient = asyncio.create_task(cache.ensure(DIGEST, len(DATA)))
    await eventually(lambda: len(fake.requests) == 1, what="the download to start")
    impatient.cancel()
    fake.gate.set()
    assert (await patient).read_bytes() == DATA
    assert impatient.cancelled()


async def test_unknown_blob_is_a_fetch_error(cache: BlobCache) -> None:
    missing = sha256_digest(b"missing")
    with pytest.raises(BlobFetchError, match="NOT_FOUND"):
        await cache.ensure(missing, 7)


async def test_a_truncated_cached_blob_is_fetched_again(
    cache: BlobCache, fake: FakeRegistry
) -> None:
    path = await cache.ensure(DIGEST, len(DATA))
    path.write_bytes(DATA[:10])
    assert (await cache.ensure(DIGEST, len(DATA))).read_bytes() == DATA
    assert len(fake.requests) == 2


async def test_registry_down_is_a_fetch_error(tmp_path: Path) -> None:
    async with open_channel(f"127.0.0.1:{free_port()}") as channel:
        cache = BlobCache(
            tmp_path,
            registry_pb2_grpc.RegistryStub(channel),
            FetchLimits(idle_timeout=2.0, fetch_timeout=2.0),
        )
        with pytest.raises(BlobFetchError, match="UNAVAILABLE"):
            await cache.ensure(DIGEST, len(DATA))
        await cache.close()


async def test_least_recently_used_blobs_are_evicted_over_the_limit(
    tmp_path: Path, stub: registry_pb2_grpc.RegistryAsyncStub, fake: FakeRegistry
) -> None:
    small = {name: os.urandom(1000) for name in ("old", "recent", "new")}
    digests = {name: sha256_digest(data) for name, data in small.items()}
    fake.blobs.update({digests[name]: data for name, data in small.items()})
    cache = BlobCache(tmp_path, stub, FetchLimits(5.0, 30.0, max_bytes=2500))
    try:
        old = await cache.ensure(digests["old"], 1000)
        recent = await cache.ensure(digests["recent"], 1000)
        _age(old, 3600)  # unused for an hour; "recent" was just used
        new = await cache.ensure(digests["new"], 1000)
        assert not old.exists()
        assert recent.exists() and new.exists()
        assert cache.size_bytes() == 2000 == _walked(tmp_path)
        # Over the limit with every blob recent: nothing more is deleted.
        await cache.ensure(DIGEST, len(DATA))
        assert recent.exists() and new.exists()
        assert cache.size_bytes() == 2000 + len(DATA) == _walked(tmp_path)
    finally:
        await cache.close()


async def test_size_is_tracked_from_the_start_through_downloads_and_refetches(
    tmp_path: Path, stub: registry_pb2_grpc.RegistryAsyncStub, fake: FakeRegistry
) -> None:
    other = os.urandom(200_000)
    fake.blobs[sha256_digest(other)] = other
    first = BlobCache(tmp_path, stub, FetchLimits(5.0, 30.0))
    try:
        assert first.size_bytes() == 0
        await first.ensure(DIGEST, len(DATA))
        # A partial download is not part of the cache's size.
        fake.fail_after = 1000
        with pytest.raises(BlobFetchError):
            await first.ensure(sha256_digest(other), len(other))
        assert first.size_bytes() == len(DATA)
    finally:
        await first.close()
    # A restarted worker finds what is on disk; a truncated blob is replaced, not counted twice.
    fake.fail_after = None
    path = tmp_path / "blobs" / "sha256" / HEX
    path.write_bytes(DATA[:10])
    second = BlobCache(tmp_path, stub, FetchLimits(5.0, 30.0))
    try:
        assert second.size_bytes() == 10
        await second.ensure(DIGEST, len(DATA))
        await second.ensure(sha256_digest(other), len(other))
        assert second.size_bytes() == len(DATA) + len(other) == _walked(tmp_path)
    finally:
        await second.close()


def _walked(root: Path) -> int:
    return sum(
        path.stat().st_size for path in (root / "blobs").glob("*/*") if path.suffix != ".incomplete"
    )


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))
