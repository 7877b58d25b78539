"""An interrupted pull keeps its partial blob and the next pull continues it with an HTTP Range.

Driven through the Puller itself (not gRPC) so that backpressure is exact: with a one-slot progress
queue the download waits while the test holds an event, so the registry is killed mid-blob.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from services.common.clock import SystemClock
from services.common.digest import sha256_file
from services.registry.app import remote_http_client
from services.registry.credentials import Credentials
from services.registry.errors import RegistryUnavailable
from services.registry.progress import EventType, TransferEvent
from services.registry.pull import Puller
from services.registry.store.manifests import MEDIA_TYPE_GGUF
from services.registry.transfer import BlobDownloader
from tests.unit.registry.conftest import open_store

from .conftest import DockerRegistry, push_model, registry_service, remote_settings, success_model

_MIB = 1 << 20


async def test_interrupted_pull_resumes_with_a_range_request(
    source_root: Path,
    fresh_registry: DockerRegistry,
    tmp_path: Path,
) -> None:
    target = f"{fresh_registry.host}/ai/smollm2:v1"
    async with registry_service(source_root) as source:
        model = success_model(await push_model(source, "ai/smollm2:v1", target))
    gguf = next(layer for layer in model.layers if layer.media_type == MEDIA_TYPE_GGUF)

    settings = remote_settings(
        progress_queue=1, transfer_chunk_bytes=256 * 1024, progress_bytes=256 * 1024
    )
    store = await open_store(tmp_path / "models")
    http = remote_http_client(settings)
    puller = Puller(
        store,
        BlobDownloader(store.blobs, settings),
        http,
        settings,
        clock=SystemClock(),
        max_metadata_bytes=1 << 20,
    )
    try:
        with pytest.raises(RegistryUnavailable):
            async with contextlib.aclosing(puller.pull(target, Credentials())) as events:
                async for event in events:
                    layer = event.layer
                    if layer is not None and layer.id == gguf.digest and layer.current >= 8 * _MIB:
                        fresh_registry.kill()
        partial = await store.blobs.incomplete_size(gguf.digest)
        assert 8 * _MIB <= partial < gguf.size, "the cut left a partial blob"
        assert await store.list_models() == []
        assert not await store.blobs.has(gguf.digest)

        fresh_registry.start()
        async with contextlib.aclosing(puller.pull(target, Credentials())) as events:
            resumed: list[TransferEvent] = [event async for event in events]
        first = next(e for e in resumed if e.layer is not None and e.layer.id == gguf.digest)
        assert first.layer is not None and first.layer.current == partial
        assert resumed[-1].type == EventType.SUCCESS
        assert resumed[-1].model is not None and resumed[-1].model.id == model.id
        blob = store.blobs.path(gguf.digest)
        assert await asyncio.to_thread(sha256_file, blob) == gguf.digest
        log = fresh_registry.log_path.read_text(errors="replace")
        assert f'/blobs/{gguf.digest} HTTP/1.1" 206' in log, "the retry asked for a Range"
    finally:
        await http.aclose()
