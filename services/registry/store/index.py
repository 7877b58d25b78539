"""`oci-layout` and `index.json`: the image layout's header and its list of tagged manifests.

Tags live only in `org.opencontainers.image.ref.name` annotations, one descriptor per tag, as the
image-layout spec prescribes; a model that lost its last tag to another model keeps one descriptor
without the annotation (a dangling model, like an untagged image) until it is deleted by id.
`index.json` is changed only by read-modify-write under an asyncio.Lock and replaced atomically
(temp file, fsync, os.replace, fsync of the directory), so concurrent tag and delete calls never
lose each other's updates and a crash leaves either the old or the new index, never half of one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.common.digest import InvalidDigest, parse_digest
from services.common.files import write_atomically
from services.registry.errors import StoreCorrupt
from services.registry.store.json_document import load_json

__all__ = [
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "MEDIA_TYPE_IMAGE_INDEX",
    "REF_NAME_ANNOTATION",
    "Index",
    "IndexDocument",
    "IndexEntry",
    "decode_index",
]

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
MEDIA_TYPE_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class IndexEntry:
    """One descriptor in `index.json`'s `manifests`."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    # Descriptor fields this store does not use (platform, urls, ...), written back unchanged.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.annotations.get(REF_NAME_ANNOTATION)

    def tagged(self, tag: str | None) -> IndexEntry:
        annotations = {k: v for k, v in self.annotations.items() if k != REF_NAME_ANNOTATION}
        if tag is not None:
            annotations[REF_NAME_ANNOTATION] = tag
        return replace(self, annotations=annotations)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            body["annotations"] = dict(self.annotations)
        body.update(self.extra)
        return body

    @classmethod
    def from_json(cls, raw: Any) -> IndexEntry:
        if not isinstance(raw, dict):
            raise StoreCorrupt("index.json: a manifests entry is not an object")
        digest, size, media_type = raw.get("digest"), raw.get("size"), raw.get("mediaType", "")
        if not isinstance(digest, str) or not isinstance(media_type, str):
            raise StoreCorrupt("index.json: a manifests entry lacks digest or mediaType")
        try:
            parse_digest(digest)
        except InvalidDigest as exc:
            raise StoreCorrupt(f"index.json: {exc}") from exc
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreCorrupt(f"index.json: entry {digest} has an invalid size")
        annotations = raw.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise StoreCorrupt(f"index.json: entry {digest} has invalid annotations")
        known = {"mediaType", "digest", "size", "annotations"}
        extra = {k: v for k, v in raw.items() if k not in known}
        return cls(media_type, digest, size, annotations, extra)


@dataclass(frozen=True)
class IndexDocument:
    """An immutable snapshot of `index.json`; the `with_*`/`without_*` methods return new ones."""

    entries: tuple[IndexEntry, ...] = ()
    # Top-level fields other than schemaVersion, mediaType and manifests (e.g. annotations).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def digests(self) -> tuple[str, ...]:
        """Each referenced manifest digest once, in index order."""
        return tuple(dict.fromkeys(entry.digest for entry in self.entries))

    def tags_of(self, digest: str) -> tuple[str, ...]:
        return tuple(e.tag for e in self.entries if e.digest == digest and e.tag is not None)

    def entry_for_tag(self, tag: str) -> IndexEntry | None:
        return next((e for e in self.entries if e.tag == tag), None)

    def entry_for_digest(self, digest: str) -> IndexEntry | None:
        return next((e for e in self.entries if e.digest == digest), None)

    def with_tag(self, tag: str, descriptor: IndexEntry) -> IndexDocument:
        """Point `tag` at `descriptor` (moving it from any other manifest)."""
        entries = list(self.without_tag(tag).entries)
        untagged = next(
            (i for i, e in enumerate(entries) if e.digest == descriptor.digest and e.tag is None),
            None,
        )
        new = descriptor.tagged(tag)
        if untagged is None:
            entries.append(new)
        else:
            entries[untagged] = new
        return replace(self, entries=tuple(entries))

    def with_untagged(self, descriptor: IndexEntry) -> IndexDocument:
        """Make sure the manifest is listed, adding a descriptor without a tag if needed."""
        if self.entry_for_digest(descriptor.digest) is not None:
            return self
        return replace(self, entries=(*self.entries, descriptor.tagged(None)))

    def without_tag(self, tag: str) -> IndexDocument:
        """Remove `tag`; a manifest left with no tags stays listed once, untagged."""
        target = self.entry_for_tag(tag)
        if target is None:
            return self
        entries = [e for e in self.entries if e.tag != tag]
        if not any(e.digest == target.digest for e in entries):
            entries.append(target.tagged(None))
        return replace(self, entries=tuple(entries))

    def without_digest(self, digest: str) -> IndexDocument:
        return replace(self, entries=tuple(e for e in self.entries if e.digest != digest))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_IMAGE_INDEX,
            "manifests": [entry.to_json() for entry in self.entries],
        }
        body.update(self.extra)
        return body

    @classmethod
    def from_json(cls, raw: Any) -> IndexDocument:
        if not isinstance(raw, dict):
            raise StoreCorrupt("index.json is not a JSON object")
        if raw.get("schemaVersion") != 2:
            raise StoreCorrupt("index.json: schemaVersion must be 2")
        manifests = raw.get("manifests") or []
        if not isinstance(manifests, list):
            raise StoreCorrupt("index.json: manifests is not a list")
        entries = tuple(IndexEntry.from_json(item) for item in manifests)
        extra = {
            k: v for k, v in raw.items() if k not in {"schemaVersion", "mediaType", "manifests"}
        }
        return cls(entries, extra)


def decode_index(data: bytes, where: str = "index.json") -> IndexDocument:
    """An index.json's bytes as a document; StoreCorrupt for anything else."""
    return IndexDocument.from_json(load_json(data, where))


def _encode(document: IndexDocument) -> bytes:
    return json.dumps(document.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


class Index:
    """`index.json` and `oci-layout` under the store root."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._root / INDEX_FILE

    async def initialize(self) -> None:
        """Create the layout header and an empty index when absent; refuse a foreign layout."""
        await asyncio.to_thread(self._initialize)

    def _initialize(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        layout = self._root / LAYOUT_FILE
        if layout.exists():
            raw = load_json(layout.read_bytes(), f"{layout} (oci-layout)")
            version = raw.get("imageLayoutVersion") if isinstance(raw, dict) else None
            if version != LAYOUT_VERSION:
                raise StoreCorrupt(f"{layout}: unsupported imageLayoutVersion {version!r}")
        else:
            write_atomically(layout, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        if not self.path.exists():
            write_atomically(self.path, _encode(IndexDocument()))

    async def read(self) -> IndexDocument:
        return await asyncio.to_thread(self._read)

    def _read(self) -> IndexDocument:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return IndexDocument()
        return decode_index(data, str(self.path))

    async def reset(self) -> None:
        """Replace the index with an empty one, even when the current one is unreadable."""
        async with self._lock:
            await asyncio.to_thread(write_atomically, self.path, _encode(IndexDocument()))

    async def update(self, change: Callable[[IndexDocument], IndexDocument]) -> IndexDocument:
        """Apply `change` to the current index and persist the result; returns it.

        `change` runs under the lock and may raise to abort without writing anything.
        """
        async with self._lock:
            current = await self.read()
            updated = change(current)
            if updated != current:
                await asyncio.to_thread(write_atomically, self.path, _encode(updated))
            return updated
