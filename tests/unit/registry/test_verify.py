"""Store verification: every blob re-hashed, bad ones named with the models they break."""

from __future__ import annotations

import hashlib
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.digest import sha256_digest
from services.registry.config import RegistrySettings
from services.registry.model_store import Model, ModelStore
from services.registry.packaging import Packager, PackageSpec
from services.registry.verify import BlobStatus, StoreVerifier, VerifyReport

from .conftest import TinyFactory, write_tiny_gguf
from .test_server import serving

CHUNK = 4096


async def _package(packager: Packager, source: Path, tag: str) -> Model:
    return await packager.package(PackageSpec(gguf_path=str(source), tag=tag))


async def _verify(store: ModelStore) -> VerifyReport:
    return await StoreVerifier(store, io_chunk_bytes=CHUNK).verify()


def _by_digest(report: VerifyReport) -> dict[str, tuple[BlobStatus, tuple[str, ...]]]:
    return {blob.digest: (blob.status, blob.models) for blob in report.blobs}


async def test_a_fresh_store_verifies_clean(
    store: ModelStore, packager: Packager, tiny_gguf: TinyFactory
) -> None:
    first = await _package(packager, tiny_gguf("a.gguf", seed=1.0), "ai/first")
    second = await _package(packager, tiny_gguf("b.gguf", seed=2.0), "ai/second")
    report = await _verify(store)
    assert report.healthy
    assert report.models == 2
    blobs = _by_digest(report)
    for model in (first, second):
        names = model.tags
        assert blobs[model.id] == (BlobStatus.OK, names)
        assert blobs[model.layers[0].digest] == (BlobStatus.OK, names)
        assert blobs[model.config_descriptor.digest][0] is BlobStatus.OK
    sizes = {blob.digest: blob.size for blob in report.blobs}
    assert sizes[first.layers[0].digest] == first.layers[0].size
    assert report.bytes_checked == sum(sizes.values())


async def test_one_flipped_byte_is_reported_corrupt_with_its_model(
    store: ModelStore, packager: Packager, tiny_gguf: TinyFactory
) -> None:
    model = await _package(packager, tiny_gguf("a.gguf", seed=1.0), "ai/victim")
    bystander = await _package(packager, tiny_gguf("b.gguf", seed=2.0), "ai/bystander")
    layer = model.layers[0]
    path = store.blobs.path(layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    report = await _verify(store)
    assert not report.healthy
    assert report.count(BlobStatus.CORRUPT) == 1
    (bad,) = [blob for blob in report.blobs if blob.status is BlobStatus.CORRUPT]
    assert bad.digest == layer.digest
    assert bad.models == ("ai/victim:latest",)
    assert bad.detail == f"content hashes to {sha256_digest(bytes(data))}"
    assert bad.size == layer.size
    assert _by_digest(report)[bystander.layers[0].digest][0] is BlobStatus.OK


async def test_a_deleted_blob_is_reported_missing_with_the_declared_size(
    store: ModelStore, packager: Packager, tiny_gguf: TinyFactory
) -> None:
    model = await _package(packager, tiny_gguf("a.gguf"), "ai/victim")
    store.blobs.path(model.config_descriptor.digest).unlink()
    report = await _verify(store)
    missing = [blob for blob in report.blobs if blob.status is BlobStatus.MISSING]
    assert [(blob.digest, blob.size, blob.models) for blob in missing] == [
        (model.config_descriptor.digest, model.config_descriptor.size, ("ai/victim:latest",))
    ]
    assert report.bytes_checked == sum(
        blob.size for blob in report.blobs if blob.status is BlobStatus.OK
    )


async def test_a_missing_manifest_is_missing_and_its_layers_are_still_checked(
    store: ModelStore, packager: Packager, tiny_gguf: TinyFactory
) -> None:
    model = await _package(packager, tiny_gguf("a.gguf"), "ai/victim")
    store.blobs.path(model.id).unlink()
    blobs = _by_digest(await _verify(store))
    assert blobs[model.id] == (BlobStatus.MISSING, ("ai/victim:latest",))
    # Its layer is still on disk; nothing readable references it any more.
    assert blobs[model.layers[0].digest] == (BlobStatus.OK, ())


async def test_unreferenced_and_foreign_blobs_are_hashed_too(
    store: ModelStore,
) -> None:
    stray = await store.blobs.write_bytes(b"left over from a deleted model")
    store.blobs.path(stray).write_bytes(b"tampered")
    # A blob under sha512 is hashed with its own algorithm.
    data = b"sha512 content"
    sha512 = "sha512:" + hashlib.sha512(data).hexdigest()
    target = store.blobs.path(sha512)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    blobs = _by_digest(await _verify(store))
    assert blobs == {stray: (BlobStatus.CORRUPT, ()), sha512: (BlobStatus.OK, ())}


async def test_partial_downloads_are_not_blobs(store: ModelStore) -> None:
    digest = sha256_digest(b"never finished")
    partial = store.blobs.path(digest).with_name(store.blobs.path(digest).name + ".incomplete")
    partial.write_bytes(b"never")
    report = await _verify(store)
    assert report.blobs == ()
    assert report.healthy


def _serving(
    root: Path,
) -> AbstractAsyncContextManager[tuple[registry_pb2_grpc.RegistryAsyncStub, str]]:
    return serving(RegistrySettings(models_path=root, listen_address="127.0.0.1:0"))


async def test_verify_rpc_reports_blobs_and_summary(tmp_path: Path) -> None:
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    async with _serving(tmp_path / "models") as (stub, _):
        packaged = await stub.Package(
            registry_pb2.PackageRequest(gguf_path=str(source), tag="ai/tiny"), timeout=30
        )
        healthy = await stub.Verify(registry_pb2.VerifyRequest(), timeout=30)
        assert (healthy.models, healthy.ok, healthy.corrupt, healthy.missing) == (1, 3, 0, 0)
        layer = packaged.model.layers[0]
        (tmp_path / "models/blobs/sha256" / layer.digest.removeprefix("sha256:")).write_bytes(b"x")
        broken = await stub.Verify(registry_pb2.VerifyRequest(), timeout=30)
    assert (broken.ok, broken.corrupt, broken.missing) == (2, 1, 0)
    (bad,) = [blob for blob in broken.blobs if blob.status == registry_pb2.BLOB_STATUS_CORRUPT]
    assert (bad.digest, bad.size, list(bad.models)) == (layer.digest, 1, ["ai/tiny:latest"])
    assert bad.detail.startswith("content hashes to sha256:")
    assert broken.bytes_checked == healthy.bytes_checked - layer.size + 1


async def test_verify_rpc_answers_internal_for_an_unreadable_index(tmp_path: Path) -> None:
    async with _serving(tmp_path / "models") as (stub, _):
        (tmp_path / "models/index.json").write_text("{not json")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Verify(registry_pb2.VerifyRequest(), timeout=30)
    assert failure.value.code() == grpc.StatusCode.INTERNAL
