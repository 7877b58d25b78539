"""Builds a ready-to-start registry from settings; shared by __main__, the local stack and tests."""

from __future__ import annotations

from dataclasses import dataclass

from modelrunner.v1 import registry_pb2_grpc
from services.common.clock import Clock
from services.common.grpc_server import GrpcServer
from services.registry.config import RegistrySettings
from services.registry.model_store import ModelStore
from services.registry.packaging import Packager
from services.registry.server import SERVICE_NAME, RegistryServicer

__all__ = ["RegistryApp", "build_registry"]


@dataclass(frozen=True)
class RegistryApp:
    server: GrpcServer
    store: ModelStore


async def build_registry(settings: RegistrySettings, *, clock: Clock) -> RegistryApp:
    """Open (creating if needed) the store and attach the servicer to an unstarted server."""
    store = ModelStore.open(
        settings.models_path,
        io_chunk_bytes=settings.io_chunk_bytes,
        max_metadata_bytes=settings.max_metadata_bytes,
    )
    await store.initialize(clock=clock, incomplete_max_age=settings.incomplete_max_age)
    packager = Packager(
        store,
        allowed_dirs=settings.package_allowed_dirs,
        max_text_file_bytes=settings.max_text_file_bytes,
    )
    server = GrpcServer(settings.listen_address, [SERVICE_NAME])
    registry_pb2_grpc.add_RegistryServicer_to_server(
        RegistryServicer(store, packager, fetch_chunk_bytes=settings.fetch_chunk_bytes),
        server.server,
    )
    return RegistryApp(server=server, store=store)
