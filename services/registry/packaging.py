"""Package a local GGUF file (plus optional license and chat template) as a DMR model artifact.

The result is what `docker model package --gguf` writes: an OCI image manifest without
artifactType, a `application/vnd.docker.ai.model.config.v0.1+json` config in DMR's real shape and
one raw layer per file carrying the three `org.cncf.model.*` annotations. Every input is checked
(exists, regular file, readable, GGUF magic or UTF-8 text) before anything is written, so bad
input leaves the store untouched.

`package_uploaded` packages files the registry wrote itself (PackageUpload): the same checks and
artifact, but the GGUF, already hashed while it was received, is moved into the store instead of
copied, and the Package path restrictions do not apply.

`descriptor.created` is the GGUF file's modification time rather than the time of packaging, so
packaging the same files twice yields the same config, the same manifest and so the same model id
(DMR stamps time.Now() and gets a new id each time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from services.common.digest import sha256_digest
from services.registry.errors import (
    InvalidArgument,
    InvalidModelFile,
    PermissionDenied,
    SourceFileNotFound,
)
from services.registry.gguf_metadata import GGUFInfo, has_gguf_magic, read_gguf_info
from services.registry.metrics import RegistryMetrics
from services.registry.model_store import Model, ModelStore
from services.registry.store.manifests import (
    ANNOTATION_FILE_METADATA,
    ANNOTATION_FILEPATH,
    ANNOTATION_MEDIATYPE_UNTESTED,
    MEDIA_TYPE_CHAT_TEMPLATE,
    MEDIA_TYPE_CONFIG_V01,
    MEDIA_TYPE_GGUF,
    MEDIA_TYPE_LICENSE,
    ConfigFile,
    Descriptor,
    ModelConfig,
    build_config,
    build_manifest,
    format_go_time_ns,
    go_json,
)

__all__ = ["PackageSpec", "Packager", "UploadedFiles"]

_log = logging.getLogger(__name__)
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class PackageSpec:
    gguf_path: str
    tag: str
    # 0 keeps the GGUF's `<architecture>.context_length`.
    context_size: int = 0
    license_path: str = ""
    chat_template_path: str = ""


@dataclass(frozen=True)
class UploadedFiles:
    """Files an upload wrote on the store's filesystem; the uploader owns them and removes what
    is left of them afterwards (the GGUF is moved into the store when packaging succeeds)."""

    gguf_path: Path
    # sha256 of the GGUF, computed while it was written.
    gguf_digest: str
    license_path: Path | None = None
    chat_template_path: Path | None = None


@dataclass(frozen=True)
class _Source:
    # Resolved (symlinks followed) for reading; `name` is the basename the caller gave.
    path: Path
    name: str
    media_type: str
    mode: int
    mtime_ns: int
    # Set for a file the registry wrote and hashed itself: it is moved in, not copied.
    digest: str = ""


class Packager:
    def __init__(
        self,
        store: ModelStore,
        *,
        allowed_dirs: Sequence[Path] = (),
        max_text_file_bytes: int,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self._store = store
        self._allowed_dirs = tuple(allowed_dirs)
        self._max_text_file_bytes = max_text_file_bytes
        self._metrics = metrics if metrics is not None else RegistryMetrics()

    async def package(self, spec: PackageSpec) -> Model:
        with self._metrics.packaging("path"):
            return await self._package(spec)

    async def _package(self, spec: PackageSpec) -> Model:
        tag = self.check_request(spec.tag, spec.context_size)
        sources = [await asyncio.to_thread(self._check_gguf, spec.gguf_path)]
        if spec.license_path:
            sources.append(
                await asyncio.to_thread(self._check_text, spec.license_path, MEDIA_TYPE_LICENSE)
            )
        if spec.chat_template_path:
            sources.append(
                await asyncio.to_thread(
                    self._check_text, spec.chat_template_path, MEDIA_TYPE_CHAT_TEMPLATE
                )
            )
        return await self._publish(tag, sources, spec.context_size)

    async def package_uploaded(self, tag: str, context_size: int, files: UploadedFiles) -> Model:
        tag = self.check_request(tag, context_size)
        gguf = await asyncio.to_thread(self._check_gguf, str(files.gguf_path), trusted=True)
        sources = [replace(gguf, digest=files.gguf_digest)]
        for path, media_type in (
            (files.license_path, MEDIA_TYPE_LICENSE),
            (files.chat_template_path, MEDIA_TYPE_CHAT_TEMPLATE),
        ):
            if path is not None:
                sources.append(
                    await asyncio.to_thread(self._check_text, str(path), media_type, trusted=True)
                )
        return await self._publish(tag, sources, context_size)

    async def _publish(self, tag: str, sources: list[_Source], context_size: int) -> Model:
        """Read the GGUF's metadata, store every blob, the config and the manifest, tag it."""
        info = await asyncio.to_thread(read_gguf_info, sources[0].path)
        context_size = context_size or info.context_length
        if context_size > _INT32_MAX:
            raise InvalidModelFile(f"context length {context_size} does not fit in int32")
        written: list[str] = []
        try:
            with self._store.pin_session() as pins:
                layers: list[Descriptor] = []
                for source in sources:
                    digest = source.digest or (await self._store.blobs.hash_file(source.path))[0]
                    pins.add(digest)
                    written.append(digest)
                    if source.digest:
                        size = await self._store.blobs.adopt_file(digest, source.path)
                    else:
                        size = await self._store.blobs.write_file(digest, source.path)
                    layers.append(_layer(source, digest, size))
                config_data = build_config(_config_file(info, layers, context_size, sources[0]))
                config_digest = sha256_digest(config_data)
                pins.add(config_digest)
                written.append(config_digest)
                await self._store.blobs.write_bytes(config_data)
                config = Descriptor(MEDIA_TYPE_CONFIG_V01, config_digest, len(config_data))
                model = await self._store.add_model(build_manifest(config, layers), [tag])
        except BaseException:
            # Blobs of a model that never reached the index are garbage; GC spares referenced ones.
            if written:
                await self._store.discard(written)
            raise
        _log.info("packaged %s as %s (%s)", sources[0].name, tag, model.id)
        return model

    def check_request(self, tag: str, context_size: int) -> str:
        """The normalized tag; InvalidArgument for a missing or bad tag or context size."""
        if not tag.strip():
            raise InvalidArgument("a tag for the packaged model is required")
        normalized = self._store.tag_for(tag)
        if not 0 <= context_size <= _INT32_MAX:
            raise InvalidArgument(f"context_size must be between 0 and {_INT32_MAX}")
        return normalized

    def _open_source(
        self, raw: str, what: str, media_type: str, *, trusted: bool = False
    ) -> _Source:
        if not raw.strip():
            raise InvalidArgument(f"{what} path is empty")
        if "\x00" in raw:
            raise InvalidArgument(f"{what} path contains a NUL byte")
        path = Path(raw).expanduser().resolve()
        if (
            not trusted
            and self._allowed_dirs
            and not any(path.is_relative_to(allowed.resolve()) for allowed in self._allowed_dirs)
        ):
            raise PermissionDenied(f"{what} {raw!r} is outside the directories Package may read")
        try:
            info = path.stat()
        except FileNotFoundError:
            raise SourceFileNotFound(f"{what} {raw!r} does not exist") from None
        except OSError as exc:
            raise InvalidModelFile(f"cannot access {what} {raw!r}: {exc.strerror}") from exc
        if stat.S_ISDIR(info.st_mode):
            raise InvalidModelFile(f"{what} {raw!r} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise InvalidModelFile(f"{what} {raw!r} is not a regular file")
        if not os.access(path, os.R_OK):
            raise InvalidModelFile(f"{what} {raw!r} is not readable")
        return _Source(
            path, Path(raw).name, media_type, stat.S_IMODE(info.st_mode), info.st_mtime_ns
        )

    def _check_gguf(self, raw: str, *, trusted: bool = False) -> _Source:
        source = self._open_source(raw, "GGUF file", MEDIA_TYPE_GGUF, trusted=trusted)
        try:
            is_gguf = has_gguf_magic(source.path)
        except OSError as exc:
            raise InvalidModelFile(f"cannot read GGUF file {raw!r}: {exc.strerror}") from exc
        if not is_gguf:
            raise InvalidModelFile(f"{raw!r} is not a GGUF file (no GGUF magic number)")
        return source

    def _check_text(self, raw: str, media_type: str, *, trusted: bool = False) -> _Source:
        what = "license" if media_type == MEDIA_TYPE_LICENSE else "chat template"
        source = self._open_source(raw, what, media_type, trusted=trusted)
        limit = self._max_text_file_bytes
        try:
            with source.path.open("rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise InvalidModelFile(f"cannot read {what} {raw!r}: {exc.strerror}") from exc
        if len(data) > limit:
            raise InvalidModelFile(f"{what} {raw!r} is larger than {limit} bytes")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidModelFile(f"{what} {raw!r} is not UTF-8 text") from exc
        return source


def _layer(source: _Source, digest: str, size: int) -> Descriptor:
    name = source.name
    metadata = {
        "name": name,
        "mode": source.mode,
        "uid": 0,
        "gid": 0,
        "size": size,
        "mtime": format_go_time_ns(source.mtime_ns),
        "typeflag": 0,
    }
    return Descriptor(
        media_type=source.media_type,
        digest=digest,
        size=size,
        annotations={
            ANNOTATION_FILEPATH: name,
            ANNOTATION_FILE_METADATA: go_json(metadata).decode(),
            ANNOTATION_MEDIATYPE_UNTESTED: "false",
        },
    )


def _config_file(
    info: GGUFInfo, layers: Sequence[Descriptor], context_size: int, gguf: _Source
) -> ConfigFile:
    created = datetime.fromtimestamp(gguf.mtime_ns / 1_000_000_000, UTC)
    return ConfigFile(
        config=ModelConfig(
            format="gguf",
            quantization=info.quantization,
            parameters=info.parameters,
            architecture=info.architecture,
            size=info.size,
            gguf=info.metadata,
            context_size=context_size,
        ),
        created=created,
        diff_ids=tuple(layer.digest for layer in layers),
    )
