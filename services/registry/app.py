"""Builds a ready-to-start registry from settings; shared by __main__, the local stack and tests."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from modelrunner.v1 import registry_pb2_grpc
from services.common.clock import Clock
from services.common.grpc_server import GrpcServer
from services.registry.config import RegistrySettings, RemoteSettings
from services.registry.metrics import RegistryMetrics
from services.registry.model_store import ModelStore
from services.registry.packaging import Packager
from services.registry.pull import Puller
from services.registry.push import Pusher
from services.registry.remote_inspect import RemoteInspector
from services.registry.server import SERVICE_NAME, RegistryServicer
from services.registry.transfer import BlobClient, BlobDownloader
from services.registry.upload import Uploader
from services.registry.verify import StoreVerifier

__all__ = ["RegistryApp", "build_registry", "remote_http_client"]


@dataclass(frozen=True)
class RegistryApp:
    server: GrpcServer
    store: ModelStore
    # For upstream registries (pull, push); closed by `close()` after the server stopped.
    http: httpx.AsyncClient
    # For blob downloads from upstream registries; closed with `http`.
    blob_client: BlobClient

    async def close(self) -> None:
        try:
            await self.http.aclose()
        finally:
            await self.blob_client.close()


def remote_http_client(settings: RemoteSettings) -> httpx.AsyncClient:
    """Every upstream call gets these timeouts; redirects (CDN blob URLs) are followed, and httpx
    drops Authorization when a redirect leaves the registry's origin."""
    timeout = httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.read_timeout,
        pool=settings.connect_timeout,
    )
    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=True,
        limits=httpx.Limits(max_connections=4 * (settings.pull_concurrency + 1)),
        headers={"User-Agent": "model-runner-registry"},
    )


async def build_registry(
    settings: RegistrySettings, *, clock: Clock, metrics: RegistryMetrics | None = None
) -> RegistryApp:
    """Open (creating if needed) the store and attach the servicer to an unstarted server;
    transfers and packaging are counted in `metrics` (a private registry's when None)."""
    metrics = metrics if metrics is not None else RegistryMetrics()
    store = ModelStore.open(
        settings.models_path,
        io_chunk_bytes=settings.io_chunk_bytes,
        max_metadata_bytes=settings.max_metadata_bytes,
        default_registry=settings.remote.default_registry,
    )
    await store.initialize(clock=clock, incomplete_max_age=settings.incomplete_max_age)
    packager = Packager(
        store,
        allowed_dirs=settings.package_allowed_dirs,
        max_text_file_bytes=settings.max_text_file_bytes,
        metrics=metrics,
    )
    uploader = Uploader(
        settings.models_path, packager, max_upload_bytes=settings.max_upload_bytes, metrics=metrics
    )
    await uploader.initialize()
    remote = settings.remote
    http = remote_http_client(remote)
    blob_client = BlobClient.create(remote)
    puller = Puller(
        store,
        BlobDownloader(store.blobs, remote, blob_client),
        http,
        remote,
        clock=clock,
        max_metadata_bytes=settings.max_metadata_bytes,
        metrics=metrics,
    )
    pusher = Pusher(
        store,
        http,
        remote,
        clock=clock,
        max_metadata_bytes=settings.max_metadata_bytes,
        metrics=metrics,
    )
    inspector = RemoteInspector(http, remote, max_metadata_bytes=settings.max_metadata_bytes)
    server = GrpcServer(settings.listen_address, [SERVICE_NAME], security=settings.security)
    registry_pb2_grpc.add_RegistryServicer_to_server(
        RegistryServicer(
            store,
            packager,
            puller=puller,
            pusher=pusher,
            inspector=inspector,
            uploader=uploader,
            fetch_chunk_bytes=settings.fetch_chunk_bytes,
            upload_drain_timeout=settings.upload_drain_timeout,
            verifier=StoreVerifier(store, io_chunk_bytes=settings.io_chunk_bytes),
        ),
        server.server,
    )
    return RegistryApp(server=server, store=store, http=http, blob_client=blob_client)
