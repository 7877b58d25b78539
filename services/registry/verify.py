"""Store integrity: re-hash every blob and say which listed models each bad one breaks.

Writes are atomic (see store/blobs.py), so a blob goes bad only behind the store's back: a disk
error, a hand edit, a restored backup. The check reads the index once, collects the blobs each
listed model's manifest references (with the sizes the manifests declare), then hashes every blob
on disk and every referenced one, chunk by chunk in worker threads. Blobs deleted while it runs
(a concurrent `rm`) read as missing only if a listed model still references them.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from services.common.digest import parse_digest
from services.registry.errors import InvalidArgument, NotFound, StoreCorrupt
from services.registry.model_store import ModelStore
from services.registry.store.manifests import MEDIA_TYPE_MANIFEST

__all__ = ["BlobCheck", "BlobStatus", "StoreVerifier", "VerifyReport"]


class BlobStatus(enum.Enum):
    OK = "ok"
    CORRUPT = "corrupt"
    MISSING = "missing"


@dataclass(frozen=True)
class BlobCheck:
    digest: str
    # Bytes on disk; for a missing blob, the size its manifest declares (0 when unknown).
    size: int
    status: BlobStatus
    # Tags (or the id of an untagged model) whose manifest is or references this blob.
    models: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    blobs: tuple[BlobCheck, ...]
    models: int

    def count(self, status: BlobStatus) -> int:
        return sum(1 for blob in self.blobs if blob.status is status)

    @property
    def bytes_checked(self) -> int:
        return sum(blob.size for blob in self.blobs if blob.status is not BlobStatus.MISSING)

    @property
    def healthy(self) -> bool:
        return all(blob.status is BlobStatus.OK for blob in self.blobs)


@dataclass
class _Expected:
    """What the manifests say about one blob (mutable only while the report is being built)."""

    size: int = 0
    models: list[str] = field(default_factory=list)


class StoreVerifier:
    """Runs one verification at a time: two would only compete for the same disk."""

    def __init__(self, store: ModelStore, *, io_chunk_bytes: int) -> None:
        self._store = store
        self._io_chunk_bytes = io_chunk_bytes
        self._running = asyncio.Lock()

    async def verify(self) -> VerifyReport:
        async with self._running:
            expected, models = await self._expected()
            on_disk = await asyncio.to_thread(lambda: set(self._store.blobs.digests()))
            checks: list[BlobCheck] = []
            for digest in sorted(on_disk | expected.keys()):
                check = await self._check(
                    digest, expected.get(digest, _Expected()), digest in on_disk
                )
                if check is not None:
                    checks.append(check)
            return VerifyReport(blobs=tuple(checks), models=models)

    async def _expected(self) -> tuple[dict[str, _Expected], int]:
        document = await self._store.document()
        expected: dict[str, _Expected] = {}

        def note(digest: str, size: int, names: Iterable[str]) -> None:
            entry = expected.setdefault(digest, _Expected())
            entry.size = entry.size or size
            entry.models.extend(name for name in names if name not in entry.models)

        models = 0
        for digest in document.digests():
            entry = document.entry_for_digest(digest)
            if entry is None or entry.media_type != MEDIA_TYPE_MANIFEST:
                continue
            models += 1
            names = document.tags_of(digest) or (digest,)
            note(digest, entry.size, names)
            try:
                manifest = await self._store.read_manifest(digest)
            except (NotFound, StoreCorrupt, InvalidArgument):
                # The manifest blob itself is reported below; its references are unknowable.
                continue
            for descriptor in (manifest.config, *manifest.layers):
                note(descriptor.digest, descriptor.size, names)
        return expected, models

    async def _check(self, digest: str, expected: _Expected, present: bool) -> BlobCheck | None:
        """None for a blob deleted while we ran that nothing needs."""
        models = tuple(expected.models)
        if present:
            try:
                actual, size = await self._hash(digest)
            except FileNotFoundError:
                present = False
            else:
                if actual != digest:
                    detail = f"content hashes to {actual}"
                elif expected.size and size != expected.size:
                    detail = f"size {size} differs from the manifest's {expected.size}"
                else:
                    return BlobCheck(digest, size, BlobStatus.OK, models)
                return BlobCheck(digest, size, BlobStatus.CORRUPT, models, detail)
        if not models:
            return None
        return BlobCheck(digest, expected.size, BlobStatus.MISSING, models, "not in the store")

    async def _hash(self, digest: str) -> tuple[str, int]:
        algorithm, _ = parse_digest(digest)
        hasher = hashlib.new(algorithm)
        path: Path = self._store.blobs.path(digest)
        handle: BinaryIO = await asyncio.to_thread(path.open, "rb")
        size = 0
        try:
            # Chunk by chunk, each in a thread: the loop stays free and a cancel stops the walk.
            while count := await asyncio.to_thread(self._hash_chunk, handle, hasher):
                size += count
        finally:
            await asyncio.to_thread(handle.close)
        return f"{algorithm}:{hasher.hexdigest()}", size

    def _hash_chunk(self, handle: BinaryIO, hasher: hashlib._Hash) -> int:
        data = handle.read(self._io_chunk_bytes)
        hasher.update(data)
        return len(data)
