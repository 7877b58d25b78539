"""Models in the image layout: list, resolve references, tag, delete with garbage collection.

A model is a manifest listed in index.json; its id is the manifest digest. Writers follow one
order so readers never see half a model: layer and config blobs first, then the manifest blob, and
the index update that makes it visible last. Mutations (add, tag, delete, GC) are serialized by one
lock; reads take no lock, since index.json is replaced atomically and blobs never change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.clock import Clock
from services.common.digest import sha256_digest
from services.common.reference import (
    DEFAULT_REGISTRY,
    InvalidReference,
    ModelReference,
    is_model_id,
    parse_reference,
)
from services.registry.errors import (
    BlobNotFound,
    Conflict,
    InvalidArgument,
    ModelNotFound,
    NotFound,
    StoreCorrupt,
)
from services.registry.store.blobs import BlobStore
from services.registry.store.index import LAYOUT_FILE, Index, IndexDocument, IndexEntry
from services.registry.store.manifests import (
    CONFIG_MEDIA_TYPES,
    MEDIA_TYPE_MANIFEST,
    ConfigFile,
    Descriptor,
    Manifest,
    ModelConfig,
    parse_config,
    parse_manifest,
)
from services.registry.store.pins import Pins, PinSession

__all__ = ["DeleteResult", "Model", "ModelStore", "PurgeResult", "describe_model"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    id: str
    tags: tuple[str, ...]
    # Unix seconds; 0 when the config does not say.
    created: int
    config: ModelConfig
    config_descriptor: Descriptor
    layers: tuple[Descriptor, ...]


def describe_model(
    digest: str, tags: Sequence[str], manifest: Manifest, config_file: ConfigFile
) -> Model:
    """The model a manifest (whose digest is `digest`) and its parsed config describe; the one
    place a stored model and a remote one (InspectRemote) get their shape."""
    created = config_file.created
    return Model(
        id=digest,
        tags=tuple(tags),
        created=int(created.timestamp()) if created is not None else 0,
        config=config_file.config,
        config_descriptor=manifest.config,
        layers=manifest.layers,
    )


@dataclass(frozen=True)
class DeleteResult:
    untagged: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()

    def actions(self) -> list[dict[str, str]]:
        """DMR's DELETE /models response: `[{"Untagged": ...}, ..., {"Deleted": ...}]`."""
        return [{"Untagged": tag} for tag in self.untagged] + [
            {"Deleted": model_id} for model_id in self.deleted
        ]


@dataclass(frozen=True)
class PurgeResult:
    deleted_models: int
    deleted_blobs: int


@dataclass(frozen=True)
class _Resolved:
    digest: str
    by_id: bool
    tag: str | None = None


def _repository_name(tag: str) -> str:
    """`ai/smollm2:latest` -> `smollm2` (the last path component, tag dropped)."""
    slash = tag.rfind("/")
    colon = tag.rfind(":")
    name = tag[:colon] if colon > slash else tag
    return name[name.rfind("/") + 1 :]


class ModelStore:
    def __init__(
        self,
        root: Path,
        *,
        blobs: BlobStore,
        index: Index,
        max_metadata_bytes: int,
        default_registry: str = DEFAULT_REGISTRY,
    ):
        self.root = root
        # Names without a host mean this registry's models (DEFAULT_REGISTRY), in tags as typed
        # and as stored.
        self._default_registry = default_registry
        self.blobs = blobs
        self._index = index
        self._max_metadata_bytes = max_metadata_bytes
        self._pins = Pins()
        self._mutation = asyncio.Lock()

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        io_chunk_bytes: int,
        max_metadata_bytes: int,
        default_registry: str = DEFAULT_REGISTRY,
    ) -> ModelStore:
        return cls(
            root,
            blobs=BlobStore(root, io_chunk_bytes=io_chunk_bytes),
            index=Index(root),
            max_metadata_bytes=max_metadata_bytes,
            default_registry=default_registry,
        )

    def parse(self, text: str) -> ModelReference:
        """`text` as a reference, with this store's default registry; InvalidArgument if not."""
        try:
            return parse_reference(text, default_registry=self._default_registry)
        except InvalidReference as exc:
            raise InvalidArgument(str(exc)) from exc

    def tag_for(self, text: str) -> str:
        """The tag `text` is stored under (`ai/smollm2:latest`); InvalidArgument for a digest or
        a malformed reference."""
        reference = self.parse(text)
        if reference.digest:
            raise InvalidArgument(f"cannot tag with a digest reference: {text!r}")
        return reference.local_name(self._default_registry)

    async def initialize(self, *, clock: Clock, incomplete_max_age: float) -> None:
        """Create the layout if absent and drop stale partial blobs (a negative age keeps them)."""
        await self._index.initialize()
        await self.blobs.initialize()
        if incomplete_max_age >= 0:
            await self.blobs.remove_stale_incomplete(
                older_than=incomplete_max_age, now=clock.wall()
            )

    @contextlib.contextmanager
    def pin_session(self) -> Iterator[PinSession]:
        """Protects blobs written for a model that is not in the index yet from GC."""
        with self._pins.session() as session:
            yield session

    # Reading

    async def document(self) -> IndexDocument:
        """The index as it is now: a snapshot, since writers replace index.json atomically."""
        return await self._index.read()

    async def read_manifest(self, digest: str) -> Manifest:
        """The manifest blob `digest`, verified against its digest and parsed."""
        data = await self.blobs.read_bytes(digest, limit=self._max_metadata_bytes)
        return parse_manifest(data)

    async def _load(self, document: IndexDocument, digest: str) -> Model:
        entry = document.entry_for_digest(digest)
        if entry is not None and entry.media_type != MEDIA_TYPE_MANIFEST:
            raise StoreCorrupt(f"{digest} is a {entry.media_type}, not a model manifest")
        manifest = await self.read_manifest(digest)
        config_type = manifest.config.media_type
        if config_type not in CONFIG_MEDIA_TYPES:
            raise StoreCorrupt(f"{digest}: config type {config_type!r} is not a model config")
        config_data = await self.blobs.read_bytes(
            manifest.config.digest, limit=self._max_metadata_bytes
        )
        config_file = parse_config(config_type, config_data)
        return describe_model(digest, document.tags_of(digest), manifest, config_file)

    async def list_models(self) -> list[Model]:
        document = await self._index.read()
        models: list[Model] = []
        for digest in document.digests():
            entry = document.entry_for_digest(digest)
            if entry is None or entry.media_type != MEDIA_TYPE_MANIFEST:
                continue
            try:
                models.append(await self._load(document, digest))
            except (NotFound, StoreCorrupt, InvalidArgument) as exc:
                _log.warning("skipping unreadable model %s: %s", digest, exc)
        return models

    async def inspect(self, reference: str) -> Model:
        """A tag, a partial name ("smollm2"), an id ("sha256:<hex>") or a 12/64-hex id prefix."""
        document = await self._index.read()
        resolved = self._resolve(document, reference, partial=True)
        try:
            return await self._load(document, resolved.digest)
        except BlobNotFound as exc:
            # Deleted between reading the index and reading the manifest.
            raise ModelNotFound(reference) from exc

    def _resolve(self, document: IndexDocument, reference: str, *, partial: bool) -> _Resolved:
        text = reference.strip()
        if not text:
            raise InvalidArgument("model reference is empty")
        if is_model_id(text):
            digest = self._match_id(document, text)
            if digest is not None:
                return _Resolved(digest, by_id=True)
            if text.startswith("sha256:"):
                raise ModelNotFound(text)
        parsed = self.parse(text)
        if parsed.digest:
            if parsed.digest in document.digests():
                return _Resolved(parsed.digest, by_id=True)
            raise ModelNotFound(text)
        tag = parsed.local_name(self._default_registry)
        entry = document.entry_for_tag(tag)
        if entry is not None:
            return _Resolved(entry.digest, by_id=False, tag=tag)
        if partial and not any(sep in text for sep in "/:@"):
            # DMR's fallback for GET and tag: "smollm2" finds "myorg/smollm2:v2".
            for candidate in document.entries:
                if candidate.tag is not None and _repository_name(candidate.tag) == text:
                    return _Resolved(candidate.digest, by_id=False, tag=candidate.tag)
        raise ModelNotFound(text)

    @staticmethod
    def _match_id(document: IndexDocument, text: str) -> str | None:
        hex_part = text.removeprefix("sha256:")
        matches = {d for d in document.digests() if d.removeprefix("sha256:").startswith(hex_part)}
        if len(matches) > 1:
            raise InvalidArgument(f"id prefix {text!r} matches {len(matches)} models")
        return next(iter(matches), None)

    # Writing

    async def add_model(self, manifest_data: bytes, tags: Sequence[str]) -> Model:
        """Publish a manifest whose blobs are already stored, and point `tags` at it.

        The manifest blob is written here, and the index updated last; a tag that named another
        model moves to this one (the other model stays, untagged, until deleted by id).
        """
        manifest = parse_manifest(manifest_data)
        if manifest.config.media_type not in CONFIG_MEDIA_TYPES:
            raise InvalidArgument(f"config type {manifest.config.media_type!r} is not supported")
        familiar = [self.tag_for(tag) for tag in tags]
        digest = sha256_digest(manifest_data)
        with self._pins.session() as pins:
            pins.add(digest)
            for descriptor in (manifest.config, *manifest.layers):
                pins.add(descriptor.digest)
                await self._check_blob(descriptor)
            await self.blobs.write_bytes(manifest_data)
            entry = IndexEntry(MEDIA_TYPE_MANIFEST, digest, len(manifest_data))

            def publish(document: IndexDocument) -> IndexDocument:
                for tag in familiar:
                    document = document.with_tag(tag, entry)
                return document.with_untagged(entry)

            async with self._mutation:
                document = await self._index.update(publish)
                return await self._load(document, digest)

    async def _check_blob(self, descriptor: Descriptor) -> None:
        # Under the digest's lock, so a concurrent GC cannot delete it after we looked.
        async with self.blobs.lock(descriptor.digest):
            try:
                size = await self.blobs.size(descriptor.digest)
            except BlobNotFound as exc:
                raise StoreCorrupt(f"blob {descriptor.digest} is missing from the store") from exc
        if size != descriptor.size:
            raise StoreCorrupt(
                f"blob {descriptor.digest} is {size} bytes, the manifest says {descriptor.size}"
            )

    async def tag(self, source: str, target: str) -> tuple[str, Model]:
        """Add tag `target` to the model `source` resolves to (DMR `docker model tag`).

        Returns the normalized tag and the model.
        """
        new_tag = self.tag_for(target)
        async with self._mutation:
            document = await self._index.read()
            resolved = self._resolve(document, source, partial=True)

            def retag(current: IndexDocument) -> IndexDocument:
                entry = current.entry_for_digest(resolved.digest)
                if entry is None:
                    raise ModelNotFound(source)
                return current.with_tag(new_tag, entry)

            document = await self._index.update(retag)
            return new_tag, await self._load(document, resolved.digest)

    async def delete(self, reference: str, *, force: bool = False) -> DeleteResult:
        """DMR's delete: by tag untags (deleting the model with its last tag); by id deletes.

        Deleting by id (or `name@digest`) a model that has several tags needs `force`.
        Blobs no remaining manifest references are removed with the model.
        """
        async with self._mutation:
            document = await self._index.read()
            resolved = self._resolve(document, reference, partial=False)
            digest = resolved.digest
            tags = document.tags_of(digest)
            if not resolved.by_id and len(tags) > 1 and resolved.tag is not None:
                tag = resolved.tag
                await self._index.update(lambda current: current.without_tag(tag))
                return DeleteResult(untagged=(tag,))
            if resolved.by_id and len(tags) > 1 and not force:
                raise Conflict(
                    f"unable to delete {reference!r} (must be forced) due to multiple tag "
                    f"references: {', '.join(tags)}"
                )
            candidates = [digest]
            try:
                candidates.extend((await self.read_manifest(digest)).blob_digests())
            except (NotFound, StoreCorrupt, InvalidArgument) as exc:
                _log.warning("deleting %s without collecting its blobs: %s", digest, exc)
            await self._index.update(lambda current: current.without_digest(digest))
            await self._collect_garbage(candidates)
            ordered = (resolved.tag,) if resolved.tag else ()
            untagged = ordered + tuple(t for t in tags if t not in ordered)
            return DeleteResult(untagged=untagged, deleted=(digest,))

    async def purge(self) -> PurgeResult:
        """DMR's purge: empty the index, then delete every complete blob.

        Refused (Conflict) when the root has no `oci-layout`, so a misconfigured MODELS_PATH
        pointing at some other directory is never wiped. Blobs pinned by a write in progress
        (a pull or an upload) are kept; partial downloads stay for their pull to resume.
        """
        async with self._mutation:
            layout = self.root / LAYOUT_FILE
            if not await asyncio.to_thread(layout.is_file):
                raise Conflict(
                    f"{self.root} has no {LAYOUT_FILE}: it does not look like a model store, "
                    "refusing to purge it"
                )
            try:
                models = len((await self._index.read()).digests())
            except StoreCorrupt as exc:
                _log.warning("purging a store whose index is unreadable: %s", exc)
                models = 0
            await self._index.reset()
            removed = 0
            for digest in await asyncio.to_thread(lambda: list(self.blobs.digests())):
                async with self.blobs.lock(digest):
                    if self._pins.is_pinned(digest):
                        continue
                    if await self.blobs.delete(digest):
                        removed += 1
            _log.info("purged %d model(s), %d blob(s)", models, removed)
            return PurgeResult(deleted_models=models, deleted_blobs=removed)

    async def discard(self, candidates: Iterable[str]) -> list[str]:
        """Remove those of `candidates` that no listed model references and no writer pins."""
        async with self._mutation:
            return await self._collect_garbage(candidates)

    async def _collect_garbage(self, candidates: Iterable[str]) -> list[str]:
        # Caller holds self._mutation, so no model can be published while this runs.
        document = await self._index.read()
        live: set[str] = set()
        for digest in document.digests():
            live.add(digest)
            try:
                live.update((await self.read_manifest(digest)).blob_digests())
            except (NotFound, StoreCorrupt, InvalidArgument) as exc:
                # Its references are unknown; deleting anything now could break it further.
                _log.warning("skipping garbage collection, manifest %s unreadable: %s", digest, exc)
                return []
        removed: list[str] = []
        for digest in dict.fromkeys(candidates):
            if digest in live:
                continue
            async with self.blobs.lock(digest):
                if self._pins.is_pinned(digest):
                    continue
                if await self.blobs.delete(digest):
                    removed.append(digest)
        if removed:
            _log.info("removed %d unreferenced blob(s)", len(removed))
        return removed
