"""Pull and Push over gRPC against a real docker-registry (CNCF distribution 2.8) on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from pathlib import Path

import grpc
import httpx
import pytest

from modelrunner.v1 import common_pb2, registry_pb2
from services.common.digest import sha256_file
from services.registry.store.manifests import MEDIA_TYPE_GGUF
from tests.support.processes import free_port
from tests.unit.registry.conftest import smollm2_path, write_tiny_gguf

from .conftest import (
    PASSWORD,
    USER,
    DockerRegistry,
    Service,
    pull_model,
    push_model,
    registry_service,
    remote_settings,
    running_registry,
    success_model,
)

PROGRESS = registry_pb2.TRANSFER_EVENT_TYPE_PROGRESS
ERROR = registry_pb2.TRANSFER_EVENT_TYPE_ERROR


def _gguf_layer(model: common_pb2.Model) -> common_pb2.Descriptor:
    return next(layer for layer in model.layers if layer.media_type == MEDIA_TYPE_GGUF)


def _layer_progress(
    messages: list[registry_pb2.TransferProgress],
) -> dict[str, list[int]]:
    by_layer: dict[str, list[int]] = {}
    for message in messages:
        if message.type == PROGRESS:
            by_layer.setdefault(message.layer.id, []).append(message.layer.current)
    return by_layer


async def test_push_then_pull_into_an_empty_store(
    source: Service, oci_registry: DockerRegistry, tmp_path: Path
) -> None:
    local = await source.stub.InspectModel(
        registry_pb2.InspectModelRequest(reference="ai/smollm2:v1")
    )
    target = f"{oci_registry.host}/ai/smollm2:v1"

    pushed = await push_model(source, "ai/smollm2:v1", target)
    assert success_model(pushed).id == local.id
    gguf = _gguf_layer(local)
    uploads = _layer_progress(pushed)[gguf.digest]
    assert uploads == sorted(uploads) and uploads[-1] == gguf.size
    assert all(m.mode == "push" and m.total >= gguf.size for m in pushed)

    async with registry_service(tmp_path / "models") as empty:
        pulled = await pull_model(empty, target)
        model = success_model(pulled)
        assert model.id == local.id
        assert model.tags == [target]
        progress = _layer_progress(pulled)
        assert set(progress) == {layer.digest for layer in local.layers}
        for layer in local.layers:
            currents = progress[layer.digest]
            assert currents == sorted(currents) and currents[-1] == layer.size
        assert len(progress[gguf.digest]) > 3, "a 98 MB layer reports progress along the way"
        assert all(m.total == sum(x.size for x in local.layers) for m in pulled)
        blob = tmp_path / "models/blobs/sha256" / gguf.digest.removeprefix("sha256:")
        assert await asyncio.to_thread(sha256_file, blob) == gguf.digest
        assert blob.stat().st_size == smollm2_path().stat().st_size
        inspected = await empty.stub.InspectModel(
            registry_pb2.InspectModelRequest(reference=target)
        )
        assert inspected.id == local.id and inspected.config == local.config

        again = await pull_model(empty, target)
        assert [m.type for m in again] == [registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS]
        assert again[0].message.startswith("Using cached model")

        by_digest = await pull_model(empty, f"{oci_registry.host}/ai/smollm2@{local.id}")
        assert success_model(by_digest).id == local.id


async def test_push_again_skips_blobs_the_registry_has(
    source: Service, oci_registry: DockerRegistry
) -> None:
    target = f"{oci_registry.host}/ai/smollm2:v2"
    await push_model(source, "ai/smollm2:v1", target)
    uploads_before = len(list(oci_registry.storage.rglob("_uploads")))
    again = await push_model(source, "ai/smollm2:v1", target)
    success_model(again)
    progress = [m for m in again if m.type == PROGRESS]
    assert progress and all(m.message.startswith("Layer already exists") for m in progress)
    assert all(m.layer.current == m.layer.size for m in progress)
    assert len(list(oci_registry.storage.rglob("_uploads"))) == uploads_before


async def test_pull_of_an_unknown_reference_is_not_found(
    oci_registry: DockerRegistry, tmp_path: Path
) -> None:
    async with registry_service(tmp_path / "models") as empty:
        for missing in (
            f"{oci_registry.host}/ai/nothing:v1",
            f"{oci_registry.host}/ai/smollm2:nope",
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await pull_model(empty, missing)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND, missing
            assert "not found" in (error.value.details() or "")


async def test_unreachable_registry_is_unavailable_quickly(tmp_path: Path) -> None:
    async with registry_service(tmp_path / "models") as empty:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await pull_model(empty, "127.0.0.1:1/ai/x")
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "127.0.0.1:1" in (error.value.details() or "")
        assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "reference",
    ["../etc/passwd", "Ai/SmolLM2", "a" * 300, "127.0.0.1:5000/ai/x:bad tag", "ai/x@sha256:12"],
)
async def test_malformed_reference_is_invalid_argument(reference: str, tmp_path: Path) -> None:
    async with registry_service(tmp_path / "models") as empty:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await pull_model(empty, reference)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_basic_auth_registry(
    source: Service, basic_registry: DockerRegistry, tmp_path: Path
) -> None:
    target = f"{basic_registry.host}/team/smollm2:v1"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await push_model(source, "ai/smollm2:v1", target, username=USER, password="wrong")
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await push_model(source, "ai/smollm2:v1", target)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    success_model(
        await push_model(source, "ai/smollm2:v1", target, username=USER, password=PASSWORD)
    )

    async with registry_service(tmp_path / "models") as empty:
        for credentials in ({}, {"username": USER, "password": "wrong"}):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await pull_model(empty, target, **credentials)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, credentials
        model = success_model(await pull_model(empty, target, username=USER, password=PASSWORD))
        assert model.tags == [target]

    # Credentials from a Docker config file, as `docker login` leaves them.
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {basic_registry.host: {"auth": token}}}))
    async with registry_service(
        tmp_path / "models2", remote_settings(docker_config_path=config)
    ) as with_config:
        success_model(await pull_model(with_config, target))


async def test_tampered_blob_is_rejected_and_nothing_lands(
    fresh_registry: DockerRegistry, tmp_path: Path
) -> None:
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf")
    async with registry_service(tmp_path / "src") as src:
        packaged = await src.stub.Package(
            registry_pb2.PackageRequest(gguf_path=str(gguf_file), tag="ai/tiny:v1")
        )
        target = f"{fresh_registry.host}/ai/tiny:v1"
        success_model(await push_model(src, "ai/tiny:v1", target))
    layer = _gguf_layer(packaged.model)
    data = fresh_registry.blob_data(layer.digest)
    content = bytearray(data.read_bytes())
    content[-1] ^= 0xFF
    data.write_bytes(bytes(content))

    async with registry_service(tmp_path / "models") as empty:
        messages = await pull_model(empty, target)
        assert messages[-1].type == ERROR
        assert messages[-1].error_code == "DATA_LOSS"
        assert layer.digest in messages[-1].message
        listed = await empty.stub.ListModels(registry_pb2.ListModelsRequest())
        assert list(listed.models) == []
        blobs = tmp_path / "models/blobs/sha256"
        hex_part = layer.digest.removeprefix("sha256:")
        assert not (blobs / hex_part).exists()
        assert not (blobs / f"{hex_part}.incomplete").exists()


async def test_unsupported_config_media_type_is_refused(
    fresh_registry: DockerRegistry, tmp_path: Path
) -> None:
    base = f"http://{fresh_registry.host}/v2/ai/image"
    config = b"{}"
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    async with httpx.AsyncClient(timeout=10) as client:
        started = await client.post(f"{base}/blobs/uploads/")
        location = started.headers["Location"]
        # `params=` would drop the Location's own `_state` query; merge instead.
        url = httpx.URL(location).copy_merge_params({"digest": digest})
        put = await client.put(url, content=config)
        assert put.status_code == 201, put.text
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(config),
            },
            "layers": [],
        }
        put = await client.put(
            f"{base}/manifests/v1",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert put.status_code == 201
    async with registry_service(tmp_path / "models") as empty:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await pull_model(empty, f"{fresh_registry.host}/ai/image:v1")
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "application/vnd.oci.image.config.v1+json" in (error.value.details() or "")


async def test_concurrent_pulls_of_one_model_download_once(
    source: Service, fresh_registry: DockerRegistry, tmp_path: Path
) -> None:
    local = await source.stub.InspectModel(
        registry_pb2.InspectModelRequest(reference="ai/smollm2:v1")
    )
    target = f"{fresh_registry.host}/ai/smollm2:v1"
    success_model(await push_model(source, "ai/smollm2:v1", target))
    gguf = _gguf_layer(local)
    async with registry_service(tmp_path / "models") as empty:
        first, second = await asyncio.gather(pull_model(empty, target), pull_model(empty, target))
        assert success_model(first).id == success_model(second).id == local.id
    assert fresh_registry.blob_gets(gguf.digest) == 1


def _repository_requests(registry: DockerRegistry, repository: str) -> int:
    """Requests for `repository` in the registry's access log."""
    return sum(
        1
        for line in registry.log_path.read_text(errors="replace").splitlines()
        if f"/v2/{repository}/" in line and "HTTP/1.1" in line
    )


async def test_default_registry_and_mirrors_with_fallback(source: Service, tmp_path: Path) -> None:
    """DEFAULT_REGISTRY=A, MODEL_RUNNER_REGISTRY_MIRRORS=<down>,B: a host-less reference is
    served by B past the dead mirror, and A is never asked; a model B lacks comes from A."""
    local = await source.stub.InspectModel(
        registry_pb2.InspectModelRequest(reference="ai/smollm2:v1")
    )
    gguf = _gguf_layer(local)
    with (
        running_registry(tmp_path / "upstream-a") as upstream,
        running_registry(tmp_path / "mirror-b") as mirror,
    ):
        success_model(await push_model(source, "ai/smollm2:v1", f"{mirror.host}/ai/mirrored:v1"))
        success_model(await push_model(source, "ai/smollm2:v1", f"{upstream.host}/ai/only-a:v1"))
        down = f"127.0.0.1:{free_port()}"
        settings = remote_settings(
            default_registry=upstream.host,
            registry_mirrors=(down, mirror.host),
            docker_config_path=tmp_path / "no-docker-config.json",
        )
        async with registry_service(tmp_path / "models", settings) as empty:
            mirror_gets = mirror.blob_gets(gguf.digest)
            model = success_model(await pull_model(empty, "ai/mirrored:v1"))
            assert model.id == local.id
            assert list(model.tags) == ["ai/mirrored:v1"]
            assert mirror.blob_gets(gguf.digest) == mirror_gets + 1
            assert _repository_requests(upstream, "ai/mirrored") == 0
            found = await empty.stub.InspectModel(
                registry_pb2.InspectModelRequest(reference="ai/mirrored:v1")
            )
            assert found.id == local.id

            # B answers 404 for a model only A has: the pull falls through to the upstream.
            upstream_gets = upstream.blob_gets(gguf.digest)
            model = success_model(await pull_model(empty, "ai/only-a:v1"))
            # The same model under a second tag: one model, both names.
            assert sorted(model.tags) == ["ai/mirrored:v1", "ai/only-a:v1"]
            assert _repository_requests(mirror, "ai/only-a") >= 1
            assert _repository_requests(upstream, "ai/only-a") >= 1
            # The GGUF was already stored by the first pull: nothing is downloaded again.
            assert upstream.blob_gets(gguf.digest) == upstream_gets

            # Naming the default registry's host explicitly is the same reference.
            model = success_model(await pull_model(empty, f"{upstream.host}/ai/mirrored:v1"))
            assert "ai/mirrored:v1" in model.tags
            assert _repository_requests(upstream, "ai/mirrored") == 0
