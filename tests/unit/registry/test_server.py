"""The Registry gRPC service end to end, in process on 127.0.0.1:0, with the real SmolLM2 GGUF."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from modelrunner.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.common.clock import SystemClock
from services.common.grpc_client import open_channel
from services.registry.app import build_registry
from services.registry.config import RegistrySettings
from tests.support.processes import wait_grpc_healthy

from .conftest import smollm2_path, write_tiny_gguf

CHUNK = 1 << 20
LAYER = "<the SmolLM2 layer>"


@dataclass(frozen=True)
class Running:
    stub: registry_pb2_grpc.RegistryAsyncStub
    address: str
    model: common_pb2.Model
    source: Path


@contextlib.asynccontextmanager
async def serving(
    settings: RegistrySettings,
) -> AsyncIterator[tuple[registry_pb2_grpc.RegistryAsyncStub, str]]:
    app = await build_registry(settings, clock=SystemClock())
    port = await app.server.start()
    address = f"127.0.0.1:{port}"
    channel = open_channel(address)
    try:
        yield registry_pb2_grpc.RegistryStub(channel), address
    finally:
        await channel.close()
        await app.server.stop(grace=1.0)
        await app.close()


@pytest.fixture(scope="module")
async def packaged(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[RegistrySettings, common_pb2.Model, Path]:
    """SmolLM2 packaged over gRPC once per module; each test then serves the same store."""
    source = smollm2_path()
    settings = RegistrySettings(
        models_path=tmp_path_factory.mktemp("registry") / "models",
        listen_address="127.0.0.1:0",
        fetch_chunk_bytes=CHUNK,
    )
    async with serving(settings) as (stub, _):
        reply = await stub.Package(
            registry_pb2.PackageRequest(gguf_path=str(source), tag="ai/smollm2"), timeout=60
        )
    return settings, reply.model, source


@pytest.fixture
async def registry(
    packaged: tuple[RegistrySettings, common_pb2.Model, Path],
) -> AsyncIterator[Running]:
    settings, model, source = packaged
    async with serving(settings) as (stub, address):
        yield Running(stub, address, model, source)


async def test_health_reports_the_registry_service(registry: Running) -> None:
    await wait_grpc_healthy(registry.address, timeout=5, service="modelrunner.v1.Registry")


async def test_package_returns_the_model(registry: Running) -> None:
    model = registry.model
    assert model.id.startswith("sha256:")
    assert list(model.tags) == ["ai/smollm2:latest"]
    assert model.config.architecture == "llama"
    assert model.config.quantization == "Q4_1"
    assert model.config.parameters == "134.52M"
    assert model.config.context_size == 8192
    assert model.config.gguf["general.basename"] == "smollm2"
    assert model.config_descriptor.media_type == "application/vnd.docker.ai.model.config.v0.1+json"
    [layer] = model.layers
    assert layer.media_type == "application/vnd.docker.ai.gguf.v3"
    assert layer.size == registry.source.stat().st_size
    assert layer.annotations["org.cncf.model.filepath"] == registry.source.name
    assert model.created > 0


async def test_list_models(registry: Running) -> None:
    reply = await registry.stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
    assert [m.id for m in reply.models] == [registry.model.id]
    assert reply.models[0] == registry.model


@pytest.mark.parametrize("reference", ["smollm2", "ai/smollm2:latest", "ai/smollm2"])
async def test_inspect_by_name(registry: Running, reference: str) -> None:
    model = await registry.stub.InspectModel(
        registry_pb2.InspectModelRequest(reference=reference), timeout=10
    )
    assert model == registry.model


async def test_inspect_by_id_prefix(registry: Running) -> None:
    short = registry.model.id[7:19]
    model = await registry.stub.InspectModel(
        registry_pb2.InspectModelRequest(reference=short), timeout=10
    )
    assert model.id == registry.model.id


async def _fetch(
    stub: registry_pb2_grpc.RegistryAsyncStub, digest: str, offset: int
) -> list[registry_pb2.BlobChunk]:
    call = stub.FetchBlob(registry_pb2.FetchBlobRequest(digest=digest, offset=offset), timeout=30)
    return [chunk async for chunk in call]


@pytest.mark.parametrize("offset", [0, 40_000_123])
async def test_fetch_blob_reassembles_exactly(registry: Running, offset: int) -> None:
    expected = registry.source.read_bytes()
    chunks = await _fetch(registry.stub, registry.model.layers[0].digest, offset)
    assert chunks[0].total_size == len(expected)
    assert all(chunk.total_size == 0 for chunk in chunks[1:])
    assert all(len(chunk.data) <= CHUNK for chunk in chunks)
    assert len(chunks) == -(-(len(expected) - offset) // CHUNK)
    assert b"".join(chunk.data for chunk in chunks) == expected[offset:]


async def test_fetch_blob_at_the_end_reports_the_size(registry: Running) -> None:
    descriptor = registry.model.config_descriptor
    chunks = await _fetch(registry.stub, descriptor.digest, descriptor.size)
    assert [(c.data, c.total_size) for c in chunks] == [(b"", descriptor.size)]


@pytest.mark.parametrize(
    ("digest", "offset", "code"),
    [
        ("sha256:" + "0" * 64, 0, grpc.StatusCode.NOT_FOUND),
        ("sha256:../../etc/passwd", 0, grpc.StatusCode.INVALID_ARGUMENT),
        ("md5:abc", 0, grpc.StatusCode.INVALID_ARGUMENT),
        ("", 0, grpc.StatusCode.INVALID_ARGUMENT),
        (LAYER, -1, grpc.StatusCode.INVALID_ARGUMENT),
        (LAYER, 10**12, grpc.StatusCode.OUT_OF_RANGE),
    ],
)
async def test_fetch_blob_errors(
    registry: Running, digest: str, offset: int, code: grpc.StatusCode
) -> None:
    if digest == LAYER:
        digest = registry.model.layers[0].digest
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _fetch(registry.stub, digest, offset)
    assert caught.value.code() == code


@pytest.mark.parametrize(
    ("reference", "code"),
    [
        ("ai/unknown", grpc.StatusCode.NOT_FOUND),
        ("sha256:" + "1" * 64, grpc.StatusCode.NOT_FOUND),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("Not A Reference", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_inspect_errors(registry: Running, reference: str, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry.stub.InspectModel(
            registry_pb2.InspectModelRequest(reference=reference), timeout=10
        )
    assert caught.value.code() == code
    assert caught.value.details()


async def test_package_errors(registry: Running, tmp_path: Path) -> None:
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("hello")
    cases = [
        (registry_pb2.PackageRequest(gguf_path="/no/such.gguf", tag="x"), "NOT_FOUND"),
        (registry_pb2.PackageRequest(gguf_path=str(not_gguf), tag="x"), "INVALID_ARGUMENT"),
        (registry_pb2.PackageRequest(gguf_path=str(tmp_path), tag="x"), "INVALID_ARGUMENT"),
        (registry_pb2.PackageRequest(gguf_path=str(not_gguf), tag=""), "INVALID_ARGUMENT"),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry.stub.Package(request, timeout=10)
        assert caught.value.code().name == code, request


async def test_tag_and_delete_round_trip(registry: Running, tmp_path: Path) -> None:
    stub = registry.stub
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    packaged = await stub.Package(
        registry_pb2.PackageRequest(gguf_path=str(tiny), tag="tiny", context_size=1024), timeout=10
    )
    assert packaged.model.config.context_size == 1024
    tagged = await stub.TagModel(
        registry_pb2.TagModelRequest(source="tiny", target="tiny:v2"), timeout=10
    )
    assert (tagged.target, tagged.model_id) == ("ai/tiny:v2", packaged.model.id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteModel(
            registry_pb2.DeleteModelRequest(reference=packaged.model.id), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.TagModel(registry_pb2.TagModelRequest(source="ai/nope", target="x"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    deleted = await stub.DeleteModel(
        registry_pb2.DeleteModelRequest(reference=packaged.model.id, force=True), timeout=10
    )
    assert list(deleted.untagged) == ["ai/tiny:latest", "ai/tiny:v2"]
    assert list(deleted.deleted) == [packaged.model.id]
    listed = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
    assert [m.id for m in listed.models] == [registry.model.id]
    # SmolLM2's blobs are untouched by deleting the other model.
    chunks = await _fetch(stub, registry.model.layers[0].digest, registry.model.layers[0].size - 5)
    assert b"".join(c.data for c in chunks) == registry.source.read_bytes()[-5:]
