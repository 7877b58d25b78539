"""PackageUpload: a GGUF received over gRPC becomes a packaged model, without being held in memory.

The bytes go to a temp file in `<MODELS_PATH>/.uploads/<random>/`, hashed as they are written; the
file is then packaged by `Packager.package_uploaded` (the same checks and artifact as Package),
which moves it into `blobs/` with a rename, since it is on the store's filesystem. The temp
directory is removed on every path (success, bad input, a client that goes away midway, which
cancels the call), so a failed upload leaves nothing in the store; a registry that crashed midway
removes the whole `.uploads` directory at its next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.registry.errors import InvalidArgument, InvalidModelFile, UploadTooLarge
from services.registry.gguf_metadata import GGUF_MAGIC
from services.registry.metrics import RegistryMetrics
from services.registry.model_store import Model
from services.registry.packaging import Packager, UploadedFiles

__all__ = ["UPLOADS_DIR", "UploadHeader", "Uploader"]

UPLOADS_DIR = ".uploads"
_DEFAULT_GGUF_NAME = "model.gguf"
_LICENSE_NAME = "LICENSE"
_CHAT_TEMPLATE_NAME = "template.jinja"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadHeader:
    tag: str
    # 0 keeps the GGUF's context length.
    context_size: int = 0
    # The layer's file name; "model.gguf" when empty.
    gguf_name: str = ""
    # The announced GGUF size; 0 when unknown.
    gguf_size: int = 0
    license: bytes = b""
    chat_template: bytes = b""


def _gguf_name(raw: str) -> str:
    """A plain file name for the layer annotation; paths and odd names are refused."""
    name = raw.strip() or _DEFAULT_GGUF_NAME
    if "/" in name or "\\" in name or "\x00" in name or name in {".", ".."} or len(name) > 255:
        raise InvalidArgument(f"invalid GGUF file name {raw!r}")
    return name


async def _remove(path: Path) -> None:
    try:
        await asyncio.to_thread(shutil.rmtree, path, True)
    except asyncio.CancelledError:
        # Cancelled again while cleaning up: finish here rather than leave a partial upload.
        shutil.rmtree(path, ignore_errors=True)
        raise


def _hash_and_write(hasher: hashlib._Hash, handle: BinaryIO, data: bytes) -> None:
    hasher.update(data)
    handle.write(data)


class Uploader:
    def __init__(
        self,
        root: Path,
        packager: Packager,
        *,
        max_upload_bytes: int,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self._dir = root / UPLOADS_DIR
        self._packager = packager
        self._max_upload_bytes = max_upload_bytes
        self._metrics = metrics if metrics is not None else RegistryMetrics()

    async def initialize(self) -> None:
        """Drop what uploads interrupted by a crash left behind (no upload survives a restart)."""
        await asyncio.to_thread(shutil.rmtree, self._dir, True)

    async def receive(self, header: UploadHeader, chunks: AsyncIterable[bytes]) -> Model:
        with self._metrics.packaging("upload"):
            return await self._receive(header, chunks)

    async def _receive(self, header: UploadHeader, chunks: AsyncIterable[bytes]) -> Model:
        # Everything the header can be refused for is checked before a byte is written.
        tag = self._packager.check_request(header.tag, header.context_size)
        name = _gguf_name(header.gguf_name)
        if header.gguf_size < 0:
            raise InvalidArgument(f"gguf_size must not be negative, got {header.gguf_size}")
        if header.gguf_size > self._max_upload_bytes:
            raise UploadTooLarge(self._max_upload_bytes)
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=self._dir))
        try:
            files = await self._write(work, name, header, chunks)
            model = await self._packager.package_uploaded(tag, header.context_size, files)
        finally:
            await _remove(work)
        _log.info("packaged an upload of %s as %s (%s)", name, tag, model.id)
        return model

    async def _write(
        self, work: Path, name: str, header: UploadHeader, chunks: AsyncIterable[bytes]
    ) -> UploadedFiles:
        license_path = chat_template_path = None
        if header.license:
            license_path = work / _LICENSE_NAME
            await asyncio.to_thread(license_path.write_bytes, header.license)
        if header.chat_template:
            chat_template_path = work / _CHAT_TEMPLATE_NAME
            await asyncio.to_thread(chat_template_path.write_bytes, header.chat_template)
        gguf_path = work / name
        digest = await self._write_gguf(gguf_path, header.gguf_size, chunks)
        return UploadedFiles(gguf_path, digest, license_path, chat_template_path)

    async def _write_gguf(self, path: Path, announced: int, chunks: AsyncIterable[bytes]) -> str:
        hasher = hashlib.sha256()
        size = 0
        magic = b""
        handle = await asyncio.to_thread(path.open, "xb")
        try:
            async for data in chunks:
                size += len(data)
                self._metrics.uploaded(len(data))
                if size > self._max_upload_bytes:
                    raise UploadTooLarge(self._max_upload_bytes)
                if announced and size > announced:
                    raise InvalidArgument(f"upload is longer than the announced {announced} bytes")
                if len(magic) < len(GGUF_MAGIC):
                    # Fail on the first bytes instead of storing gigabytes of something else.
                    magic = (magic + data)[: len(GGUF_MAGIC)]
                    if len(magic) == len(GGUF_MAGIC) and magic != GGUF_MAGIC:
                        raise InvalidModelFile("the upload is not a GGUF file (no GGUF magic)")
                await asyncio.to_thread(_hash_and_write, hasher, handle, data)
            await asyncio.to_thread(handle.flush)
        finally:
            handle.close()
        if announced and size != announced:
            raise InvalidArgument(
                f"upload truncated: received {size} of the announced {announced} bytes"
            )
        if magic != GGUF_MAGIC:
            raise InvalidModelFile("the upload is not a GGUF file (no GGUF magic)")
        return "sha256:" + hasher.hexdigest()
