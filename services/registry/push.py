"""Push a local model to an upstream OCI registry, as a stream of progress events.

Before the first event: the local model and the target reference are resolved, and one HEAD
(the config blob) proves the registry reachable and the credentials good. Then each blob the
registry lacks is uploaded (bounded parallelism) with a POST and one streamed PUT whose body is
read from the store chunk by chunk, never whole; blobs it has are skipped. The manifest goes last,
so the registry never holds a tag that points at missing blobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import httpx

from services.common.clock import Clock
from services.common.reference import is_model_id
from services.registry.config import RemoteSettings
from services.registry.credentials import Credentials
from services.registry.errors import InvalidArgument
from services.registry.metrics import RegistryMetrics
from services.registry.model_store import Model, ModelStore
from services.registry.oci import RepositorySession
from services.registry.progress import (
    EventType,
    Throttle,
    TransferEvent,
    format_bytes,
    progress_event,
)
from services.registry.pull import open_session, parse_remote_reference, run_with_events
from services.registry.store.manifests import MEDIA_TYPE_MANIFEST, Descriptor

__all__ = ["Pusher"]


class Pusher:
    def __init__(
        self,
        store: ModelStore,
        http: httpx.AsyncClient,
        settings: RemoteSettings,
        *,
        clock: Clock,
        max_metadata_bytes: int,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self._store = store
        self._http = http
        self._metrics = metrics if metrics is not None else RegistryMetrics()
        self._settings = settings
        self._clock = clock
        self._max_metadata_bytes = max_metadata_bytes

    def push(
        self, reference: str, target: str, credentials: Credentials
    ) -> AsyncIterator[TransferEvent]:
        return self._metrics.metered(
            "push", self._push(reference, target, credentials), self._clock
        )

    async def _push(
        self, reference: str, target: str, credentials: Credentials
    ) -> AsyncGenerator[TransferEvent, None]:
        destination = target.strip() or reference.strip()
        if is_model_id(destination):
            raise InvalidArgument(f"push needs a target reference, not the id {destination!r}")
        remote = parse_remote_reference(destination, self._settings.default_registry)
        if remote.digest:
            raise InvalidArgument(f"cannot push to a digest reference: {destination!r}")
        model = await self._store.inspect(reference)
        manifest_data = await self._store.blobs.read_bytes(model.id, limit=self._max_metadata_bytes)
        session = await open_session(self._http, self._settings, remote, credentials, push=True)
        blobs = list({d.digest: d for d in (*model.layers, model.config_descriptor)}.values())
        # Fails fast (before any progress) on a bad host or bad credentials.
        present = {model.config_descriptor.digest: await session.blob_exists(blobs[-1].digest)}
        total = sum(layer.size for layer in model.layers)
        queue: asyncio.Queue[TransferEvent] = asyncio.Queue(self._settings.progress_queue)
        work = self._upload_all(session, model, blobs, present, total, queue)
        async for event in run_with_events(work, queue):
            yield event
        await session.put_manifest(remote.tag, manifest_data, MEDIA_TYPE_MANIFEST)
        yield TransferEvent(
            EventType.SUCCESS,
            f"Model pushed successfully ({format_bytes(total)})",
            "push",
            total=total,
            model=model,
        )

    async def _upload_all(
        self,
        session: RepositorySession,
        model: Model,
        blobs: list[Descriptor],
        present: dict[str, bool],
        total: int,
        queue: asyncio.Queue[TransferEvent],
    ) -> None:
        limit = asyncio.Semaphore(self._settings.push_concurrency)
        layer_digests = {layer.digest for layer in model.layers}

        async def one(blob: Descriptor) -> None:
            async with limit:
                exists = present.get(blob.digest)
                if exists is None:
                    exists = await session.blob_exists(blob.digest)
                if not exists:
                    await self._upload(
                        session, blob, total, queue, report=blob.digest in layer_digests
                    )
                elif blob.digest in layer_digests:
                    event = progress_event(blob, blob.size, total, "push")
                    await queue.put(
                        TransferEvent(
                            EventType.PROGRESS,
                            f"Layer already exists: {blob.digest}",
                            "push",
                            total=total,
                            layer=event.layer,
                        )
                    )

        tasks = [asyncio.create_task(one(blob)) for blob in blobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    async def _upload(
        self,
        session: RepositorySession,
        blob: Descriptor,
        total: int,
        queue: asyncio.Queue[TransferEvent],
        *,
        report: bool,
    ) -> None:
        throttle = Throttle(
            self._clock,
            size=blob.size,
            interval=self._settings.progress_interval,
            min_bytes=self._settings.progress_bytes,
        )
        chunk_bytes = self._settings.transfer_chunk_bytes

        async def body() -> AsyncIterator[bytes]:
            async with self._store.blobs.open(blob.digest) as reader:
                done = 0
                async for data in reader.chunks(chunk_bytes):
                    yield data
                    self._metrics.pushed(len(data))
                    done += len(data)
                    if report and throttle.should_emit(done):
                        await queue.put(progress_event(blob, done, total, "push"))

        await session.upload_blob(blob.digest, blob.size, body)
