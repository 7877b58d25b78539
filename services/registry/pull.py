"""Pull a model from an upstream OCI registry into the store, as a stream of progress events.

Everything that can be refused cheaply happens before the first event: the reference is parsed,
the manifest fetched and verified, its media types checked (DMR v0.1/v0.2 configs and CNCF
ModelPack v1 only, as DMR's `checkCompat`), and the config blob fetched and parsed. Errors there
propagate as exceptions. Then layers download in parallel (bounded), and the model is added to the
store only once every blob is present and verified, so a failed pull leaves the store as it was
(partial `.incomplete` files stay for a resume).

References without a host go to DEFAULT_REGISTRY. Pulls from Docker Hub or the default registry
try MODEL_RUNNER_REGISTRY_MIRRORS first, in order: a mirror that is unreachable, keeps failing
(5xx), lacks the model (404) or answers nonsense is skipped for the next one, then the upstream.
The choice is made on the manifest and config; the layers come from the endpoint that served them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from services.common.clock import Clock
from services.common.reference import (
    DEFAULT_REGISTRY,
    InvalidReference,
    ModelReference,
    parse_reference,
)
from services.registry.config import RemoteSettings
from services.registry.credentials import Credentials, docker_config_credentials
from services.registry.errors import (
    InvalidArgument,
    RegistryUnavailable,
    RemoteNotFound,
    RemoteProtocolError,
    StoreCorrupt,
    UnsupportedMediaType,
)
from services.registry.metrics import RegistryMetrics
from services.registry.model_store import ModelStore
from services.registry.oci import (
    Endpoint,
    RemoteManifest,
    RepositorySession,
    pull_endpoints,
    resolve_endpoint,
)
from services.registry.progress import (
    EventType,
    Throttle,
    TransferEvent,
    format_bytes,
    progress_event,
)
from services.registry.store.json_document import load_json
from services.registry.store.manifests import (
    CONFIG_MEDIA_TYPES,
    MEDIA_TYPE_MANIFEST,
    ConfigFile,
    Descriptor,
    Manifest,
    parse_config,
    parse_manifest,
)
from services.registry.transfer import BlobDownloader

__all__ = [
    "Puller",
    "check_manifest",
    "fetch_model_manifest",
    "open_session",
    "parse_remote_config",
    "parse_remote_reference",
    "run_with_events",
    "try_endpoints",
]

_log = logging.getLogger(__name__)

# What makes a mirror give way to the next endpoint; auth refusals and unsupported artifacts
# are answers about the model itself and end the pull.
_MIRROR_FALLBACK = (RegistryUnavailable, RemoteNotFound, RemoteProtocolError)
_T = TypeVar("_T")


def parse_remote_reference(text: str, default_registry: str = DEFAULT_REGISTRY) -> ModelReference:
    try:
        return parse_reference(text, default_registry=default_registry)
    except InvalidReference as exc:
        raise InvalidArgument(str(exc)) from exc


async def open_session(
    http: httpx.AsyncClient,
    settings: RemoteSettings,
    reference: ModelReference,
    credentials: Credentials,
    *,
    push: bool = False,
    endpoint: Endpoint | None = None,
) -> RepositorySession:
    """A session for `reference`'s repository with the request's or Docker's credentials.

    `endpoint` names a mirror to use instead of the reference's registry; the request's
    credentials are meant for the registry the user named and are never sent to a mirror,
    which gets its own Docker config entry, if any.
    """
    endpoint = endpoint or resolve_endpoint(reference.registry, settings)
    if endpoint.registry != reference.registry:
        credentials = Credentials()
    if credentials.empty:
        found = await asyncio.to_thread(
            docker_config_credentials, settings.docker_config_path, endpoint.registry
        )
        credentials = found or credentials
    return RepositorySession(http, settings, endpoint, reference.repository, credentials, push=push)


def check_manifest(remote: RemoteManifest) -> Manifest:
    """Refuse indexes, Docker images and non-model configs, naming the media type."""
    try:
        raw = load_json(remote.data, "manifest")
    except StoreCorrupt as exc:
        raise RemoteProtocolError(str(exc)) from exc
    if not isinstance(raw, dict):
        raise RemoteProtocolError("manifest is not a JSON object")
    declared = raw.get("mediaType") or remote.media_type
    if declared and declared != MEDIA_TYPE_MANIFEST:
        raise UnsupportedMediaType(
            f"manifest media type {declared!r} is not supported; a model is a single "
            f"{MEDIA_TYPE_MANIFEST}"
        )
    try:
        manifest = parse_manifest(remote.data)
    except StoreCorrupt as exc:
        raise RemoteProtocolError(f"invalid manifest: {exc}") from exc
    config_type = manifest.config.media_type
    if config_type not in CONFIG_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"config media type {config_type!r} is not supported "
            f"(supported: {', '.join(sorted(CONFIG_MEDIA_TYPES))}); try upgrading"
        )
    return manifest


async def fetch_model_manifest(
    session: RepositorySession, reference: ModelReference, *, max_bytes: int
) -> tuple[RemoteManifest, Manifest]:
    """The reference's manifest, verified and checked to be a model whose config is small enough
    to read whole."""
    remote = await session.get_manifest(reference.digest or reference.tag, max_bytes=max_bytes)
    manifest = check_manifest(remote)
    if manifest.config.size > max_bytes:
        raise RemoteProtocolError(f"config blob is larger than {max_bytes}")
    return remote, manifest


def parse_remote_config(descriptor: Descriptor, data: bytes) -> ConfigFile:
    try:
        return parse_config(descriptor.media_type, data)
    except StoreCorrupt as exc:
        raise RemoteProtocolError(f"invalid model config: {exc}") from exc


async def try_endpoints(
    reference: ModelReference,
    settings: RemoteSettings,
    attempt: Callable[[Endpoint], Awaitable[_T]],
) -> _T:
    """`attempt` against each mirror of the reference's registry in order, then the registry.

    A mirror that is unreachable, keeps failing, lacks the model or answers nonsense gives way to
    the next endpoint; the upstream's error is the one raised.
    """
    *mirrors, upstream = pull_endpoints(reference.registry, settings)
    for mirror in mirrors:
        try:
            return await attempt(mirror)
        except _MIRROR_FALLBACK as exc:
            _log.warning(
                "mirror %s failed for %s, trying the next endpoint: %s",
                mirror.registry,
                reference.qualified,
                exc,
            )
    return await attempt(upstream)


async def run_with_events(
    work: Awaitable[None], queue: asyncio.Queue[TransferEvent]
) -> AsyncIterator[TransferEvent]:
    """Yield what `work` puts on `queue` until it ends; re-raise its error; cancel it if closed."""
    worker = asyncio.ensure_future(work)
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, worker}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            while not queue.empty():
                yield queue.get_nowait()
            worker.result()
            return
    finally:
        if not worker.done():
            worker.cancel()
            await asyncio.wait([worker])


@dataclass(frozen=True)
class _Plan:
    reference: ModelReference
    session: RepositorySession
    manifest_data: bytes
    manifest: Manifest

    @property
    def layers(self) -> list[Descriptor]:
        return list({layer.digest: layer for layer in self.manifest.layers}.values())


class Puller:
    def __init__(
        self,
        store: ModelStore,
        downloader: BlobDownloader,
        http: httpx.AsyncClient,
        settings: RemoteSettings,
        *,
        clock: Clock,
        max_metadata_bytes: int,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self._store = store
        self._downloader = downloader
        self._metrics = metrics if metrics is not None else RegistryMetrics()
        self._http = http
        self._settings = settings
        self._clock = clock
        self._max_metadata_bytes = max_metadata_bytes

    def pull(self, reference: str, credentials: Credentials) -> AsyncIterator[TransferEvent]:
        return self._metrics.metered("pull", self._pull(reference, credentials), self._clock)

    async def _pull(
        self, reference: str, credentials: Credentials
    ) -> AsyncGenerator[TransferEvent, None]:
        plan = await self._prepare(reference, credentials)
        tags = (
            ()
            if plan.reference.digest
            # The store names it: without the host when it is the default registry's.
            else (plan.reference.qualified,)
        )
        layers = plan.layers
        total = sum(layer.size for layer in layers)
        missing = [layer for layer in layers if not await self._store.blobs.has(layer.digest)]
        with self._store.pin_session() as pins:
            for digest in plan.manifest.blob_digests():
                pins.add(digest)
            if missing:
                queue: asyncio.Queue[TransferEvent] = asyncio.Queue(self._settings.progress_queue)
                work = self._download_all(plan.session, layers, total, queue)
                async for event in run_with_events(work, queue):
                    yield event
            model = await self._store.add_model(plan.manifest_data, tags)
        message = (
            "Model pulled successfully" if missing else f"Using cached model: {format_bytes(total)}"
        )
        yield TransferEvent(EventType.SUCCESS, message, "pull", total=total, model=model)

    async def _prepare(self, text: str, credentials: Credentials) -> _Plan:
        reference = parse_remote_reference(text, self._settings.default_registry)
        return await try_endpoints(
            reference,
            self._settings,
            lambda endpoint: self._prepare_from(reference, endpoint, credentials),
        )

    async def _prepare_from(
        self, reference: ModelReference, endpoint: Endpoint, credentials: Credentials
    ) -> _Plan:
        session = await open_session(
            self._http, self._settings, reference, credentials, endpoint=endpoint
        )
        remote, manifest = await fetch_model_manifest(
            session, reference, max_bytes=self._max_metadata_bytes
        )
        config = manifest.config

        async def ignore(_digest: str, _current: int) -> None:
            return None

        await self._downloader.fetch(session, config, ignore)
        data = await self._store.blobs.read_bytes(config.digest, limit=self._max_metadata_bytes)
        parse_remote_config(config, data)
        return _Plan(reference, session, remote.data, manifest)

    async def _download_all(
        self,
        session: RepositorySession,
        layers: list[Descriptor],
        total: int,
        queue: asyncio.Queue[TransferEvent],
    ) -> None:
        limit = asyncio.Semaphore(self._settings.pull_concurrency)
        downloads = self._metrics.downloads

        async def one(layer: Descriptor) -> None:
            throttle = Throttle(
                self._clock,
                size=layer.size,
                interval=self._settings.progress_interval,
                min_bytes=self._settings.progress_bytes,
            )

            async def sink(digest: str, current: int) -> None:
                downloads.report(digest, current)
                if throttle.should_emit(current):
                    await queue.put(progress_event(layer, current, total, "pull"))

            async with limit:
                with downloads.watching(layer.digest):
                    await self._downloader.fetch(session, layer, sink)

        tasks = [asyncio.create_task(one(layer)) for layer in layers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
