"""Describe a model as an upstream registry holds it, without pulling it (InspectRemote).

DMR's `GET /models/{name}?remote=true`: the same reference normalization, endpoints (mirrors
first), credentials, timeouts and retries as a pull, and the same manifest and media-type checks,
so whatever inspects fine also pulls. Only the manifest and the config blob are read, both into
memory and bounded by REGISTRY_MAX_METADATA_BYTES; the store is never touched, so an inspect
leaves no blob, partial file or index entry behind. The config blob is verified against its
digest, as a pull would verify it.
"""

from __future__ import annotations

import hashlib

import httpx

from services.common.digest import InvalidDigest, parse_digest
from services.common.reference import ModelReference
from services.registry.config import RemoteSettings
from services.registry.credentials import Credentials
from services.registry.errors import RemoteDigestMismatch, RemoteProtocolError
from services.registry.model_store import Model, describe_model
from services.registry.oci import (
    Endpoint,
    RepositorySession,
    retrying,
    unavailable_on_transport,
)
from services.registry.pull import (
    fetch_model_manifest,
    open_session,
    parse_remote_config,
    parse_remote_reference,
    try_endpoints,
)
from services.registry.store.manifests import Descriptor

__all__ = ["RemoteInspector", "read_small_blob"]


async def read_small_blob(
    session: RepositorySession, descriptor: Descriptor, settings: RemoteSettings
) -> bytes:
    """A blob small enough to hold in memory (a config), verified against its digest.

    The caller has bounded `descriptor.size`; a registry that sends more, or other bytes, is
    refused (DATA_LOSS) rather than believed. Transient failures are retried like any upstream
    call.
    """
    try:
        algorithm, _ = parse_digest(descriptor.digest)
    except InvalidDigest as exc:
        raise RemoteProtocolError(str(exc)) from exc
    async with unavailable_on_transport(session.endpoint):
        async for attempt in retrying(settings):
            with attempt:
                data = await _read_once(session, descriptor, settings.transfer_chunk_bytes)
    actual = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    if actual != descriptor.digest:
        raise RemoteDigestMismatch(descriptor.digest, actual)
    return data


async def _read_once(session: RepositorySession, descriptor: Descriptor, chunk_bytes: int) -> bytes:
    buffer = bytearray()
    async with session.open_blob(descriptor.digest, 0) as response:
        if response.status_code != 200:
            raise RemoteProtocolError(
                f"blob {descriptor.digest}: unexpected status {response.status_code}"
            )
        async for data in response.aiter_bytes(chunk_bytes):
            buffer += data
            if len(buffer) > descriptor.size:
                raise RemoteDigestMismatch(
                    descriptor.digest, f"more than the {descriptor.size} bytes announced"
                )
    return bytes(buffer)


class RemoteInspector:
    def __init__(
        self, http: httpx.AsyncClient, settings: RemoteSettings, *, max_metadata_bytes: int
    ) -> None:
        self._http = http
        self._settings = settings
        self._max_metadata_bytes = max_metadata_bytes

    async def inspect(self, reference: str, credentials: Credentials) -> Model:
        """The model `reference` names upstream; its id is the manifest digest and it has no
        tags (tags are local, and DMR answers none for a remote model)."""
        parsed = parse_remote_reference(reference, self._settings.default_registry)
        return await try_endpoints(
            parsed,
            self._settings,
            lambda endpoint: self._inspect_at(parsed, endpoint, credentials),
        )

    async def _inspect_at(
        self, reference: ModelReference, endpoint: Endpoint, credentials: Credentials
    ) -> Model:
        session = await open_session(
            self._http, self._settings, reference, credentials, endpoint=endpoint
        )
        remote, manifest = await fetch_model_manifest(
            session, reference, max_bytes=self._max_metadata_bytes
        )
        data = await read_small_blob(session, manifest.config, self._settings)
        config_file = parse_remote_config(manifest.config, data)
        return describe_model(remote.digest, (), manifest, config_file)
