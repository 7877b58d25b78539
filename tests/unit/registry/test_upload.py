"""PackageUpload and Purge over gRPC, in process, against a fresh store per test."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from modelrunner.v1 import registry_pb2
from services.registry.config import RegistrySettings
from services.registry.upload import UPLOADS_DIR
from tests.support.processes import wait_until

from .conftest import stored_files, write_tiny_gguf
from .test_server import serving

GGUF_TYPE = "application/vnd.docker.ai.gguf.v3"
LICENSE_TYPE = "application/vnd.docker.ai.license"
TEMPLATE_TYPE = "application/vnd.docker.ai.chat.template.jinja"

if TYPE_CHECKING:
    from modelrunner.v1.registry_pb2_grpc import RegistryAsyncStub as Stub


@pytest.fixture
def settings(tmp_path: Path) -> RegistrySettings:
    return RegistrySettings(models_path=tmp_path / "models", listen_address="127.0.0.1:0")


@pytest.fixture
async def stub(settings: RegistrySettings) -> AsyncIterator[Stub]:
    async with serving(settings) as (running, _):
        yield running


def _messages(
    header: registry_pb2.PackageUploadHeader, data: bytes, chunk: int = 1000
) -> list[registry_pb2.PackageUploadRequest]:
    parts = [registry_pb2.PackageUploadRequest(header=header)]
    parts.extend(
        registry_pb2.PackageUploadRequest(gguf_chunk=data[i : i + chunk])
        for i in range(0, len(data), chunk)
    )
    parts.append(registry_pb2.PackageUploadRequest(end=True))
    return parts


async def _upload(
    stub: Stub, messages: Iterable[registry_pb2.PackageUploadRequest]
) -> registry_pb2.PackageResponse:
    async def requests() -> AsyncIterator[registry_pb2.PackageUploadRequest]:
        for message in messages:
            yield message

    return await stub.PackageUpload(requests(), timeout=30)


def _leftovers(root: Path) -> list[str]:
    """Blobs and upload temp files: empty when a failed upload left the store as it was."""
    uploads = root / UPLOADS_DIR
    temp = sorted(str(p.relative_to(root)) for p in uploads.rglob("*")) if uploads.exists() else []
    return stored_files(root) + temp


async def test_upload_packages_the_gguf_with_license_and_template(
    stub: Stub, settings: RegistrySettings, tmp_path: Path
) -> None:
    data = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    header = registry_pb2.PackageUploadHeader(
        tag="myorg/tiny:v1",
        context_size=1024,
        gguf_name="tiny-f32.gguf",
        gguf_size=len(data),
        license=b"MIT License\n",
        chat_template=b"{{ messages }}",
    )

    reply = await _upload(stub, _messages(header, data))

    model = reply.model
    assert list(model.tags) == ["myorg/tiny:v1"]
    assert model.config.context_size == 1024
    assert model.config.architecture == "llama"
    assert [layer.media_type for layer in model.layers] == [GGUF_TYPE, LICENSE_TYPE, TEMPLATE_TYPE]
    gguf, license_layer, template = model.layers
    assert gguf.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert gguf.size == len(data)
    assert gguf.annotations["org.cncf.model.filepath"] == "tiny-f32.gguf"
    root = settings.models_path
    assert (root / "blobs/sha256" / gguf.digest[7:]).read_bytes() == data
    assert (root / "blobs/sha256" / license_layer.digest[7:]).read_bytes() == b"MIT License\n"
    assert (root / "blobs/sha256" / template.digest[7:]).read_bytes() == b"{{ messages }}"
    assert list((root / UPLOADS_DIR).iterdir()) == []
    inspected = await stub.InspectModel(
        registry_pb2.InspectModelRequest(reference="myorg/tiny:v1"), timeout=10
    )
    assert inspected == model


async def test_upload_without_announced_size_keeps_the_gguf_context(
    stub: Stub, tmp_path: Path
) -> None:
    data = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=4096).read_bytes()

    reply = await _upload(stub, _messages(registry_pb2.PackageUploadHeader(tag="tiny"), data))

    assert list(reply.model.tags) == ["ai/tiny:latest"]
    assert reply.model.config.context_size == 4096
    [layer] = reply.model.layers
    assert layer.annotations["org.cncf.model.filepath"] == "model.gguf"


async def test_same_gguf_uploaded_twice_shares_its_blob(
    stub: Stub, settings: RegistrySettings, tmp_path: Path
) -> None:
    data = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    first = await _upload(stub, _messages(registry_pb2.PackageUploadHeader(tag="a"), data))
    second = await _upload(stub, _messages(registry_pb2.PackageUploadHeader(tag="b"), data))

    digest = first.model.layers[0].digest
    assert second.model.layers[0].digest == digest
    await stub.DeleteModel(registry_pb2.DeleteModelRequest(reference="a"), timeout=10)
    blob = settings.models_path / "blobs/sha256" / digest[7:]
    assert blob.read_bytes() == data
    assert list((settings.models_path / UPLOADS_DIR).iterdir()) == []


def _tiny(tmp_path: Path) -> bytes:
    return write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("not a gguf", grpc.StatusCode.INVALID_ARGUMENT, "not a GGUF"),
        ("empty", grpc.StatusCode.INVALID_ARGUMENT, "not a GGUF"),
        ("truncated", grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        ("overlong", grpc.StatusCode.INVALID_ARGUMENT, "longer than"),
        ("corrupt header", grpc.StatusCode.INVALID_ARGUMENT, "GGUF"),
        ("bad tag", grpc.StatusCode.INVALID_ARGUMENT, ""),
        ("digest tag", grpc.StatusCode.INVALID_ARGUMENT, "digest"),
        ("no tag", grpc.StatusCode.INVALID_ARGUMENT, "tag"),
        ("path name", grpc.StatusCode.INVALID_ARGUMENT, "file name"),
        ("no header", grpc.StatusCode.INVALID_ARGUMENT, "header"),
        ("two headers", grpc.StatusCode.INVALID_ARGUMENT, "only GGUF chunks"),
        ("no end marker", grpc.StatusCode.INVALID_ARGUMENT, "end marker"),
        ("nothing", grpc.StatusCode.INVALID_ARGUMENT, "header"),
    ],
)
async def test_bad_uploads_leave_nothing(
    stub: Stub,
    settings: RegistrySettings,
    tmp_path: Path,
    case: str,
    code: grpc.StatusCode,
    words: str,
) -> None:
    data = _tiny(tmp_path)
    header = registry_pb2.PackageUploadHeader(tag="ai/tiny")
    messages = {
        "not a gguf": _messages(header, b"PK\x03\x04 a zip, say" * 100),
        "empty": _messages(header, b""),
        "truncated": _messages(_with(header, gguf_size=len(data)), data[:-10]),
        "overlong": _messages(_with(header, gguf_size=len(data) - 1), data),
        "corrupt header": _messages(header, data[:40]),
        "bad tag": _messages(_with(header, tag="Bad Tag!"), data),
        "digest tag": _messages(_with(header, tag="ai/tiny@sha256:" + "a" * 64), data),
        "no tag": _messages(_with(header, tag=""), data),
        "path name": _messages(_with(header, gguf_name="../escape.gguf"), data),
        "no header": _messages(header, data)[1:],
        "two headers": [*_messages(header, data[:10])[:-1], *_messages(header, data[10:])],
        "no end marker": _messages(header, data)[:-1],
        "nothing": [],
    }[case]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _upload(stub, messages)

    assert caught.value.code() == code
    assert words in (caught.value.details() or "")
    assert _leftovers(settings.models_path) == []
    listed = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
    assert list(listed.models) == []


def _with(
    header: registry_pb2.PackageUploadHeader, **fields: object
) -> registry_pb2.PackageUploadHeader:
    copy = registry_pb2.PackageUploadHeader()
    copy.CopyFrom(header)
    for name, value in fields.items():
        setattr(copy, name, value)
    return copy


@pytest.mark.parametrize("announced", [True, False])
async def test_uploads_beyond_the_limit_are_refused(tmp_path: Path, announced: bool) -> None:
    data = _tiny(tmp_path)
    settings = RegistrySettings(
        models_path=tmp_path / "models",
        listen_address="127.0.0.1:0",
        max_upload_bytes=len(data) - 1,
    )
    header = registry_pb2.PackageUploadHeader(tag="tiny", gguf_size=len(data) if announced else 0)
    async with serving(settings) as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _upload(stub, _messages(header, data))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "REGISTRY_MAX_UPLOAD_BYTES" in (caught.value.details() or "")
    assert _leftovers(settings.models_path) == []


async def test_a_client_that_goes_away_midway_leaves_nothing(
    stub: Stub, settings: RegistrySettings, tmp_path: Path
) -> None:
    data = _tiny(tmp_path)
    uploads = settings.models_path / UPLOADS_DIR
    call = stub.PackageUpload(timeout=30)
    await call.write(
        registry_pb2.PackageUploadRequest(
            header=registry_pb2.PackageUploadHeader(tag="tiny", gguf_size=len(data))
        )
    )
    await call.write(registry_pb2.PackageUploadRequest(gguf_chunk=data[:100]))
    # The registry has started writing the upload before the client goes away.
    await wait_until(
        lambda: uploads.exists() and any(p.is_file() for p in uploads.rglob("*")),
        what="the upload's temp file",
    )

    call.cancel()

    await wait_until(lambda: not any(uploads.rglob("*")), what="the temp upload to be removed")
    assert stored_files(settings.models_path) == []


async def test_stale_uploads_are_removed_at_start(settings: RegistrySettings) -> None:
    stale = settings.models_path / UPLOADS_DIR / "tmpabc" / "model.gguf"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"GGUF half an upload")

    async with serving(settings):
        assert not stale.exists()


async def test_purge_removes_every_model_and_blob(
    stub: Stub, settings: RegistrySettings, tmp_path: Path
) -> None:
    first = write_tiny_gguf(tmp_path / "a.gguf", seed=1.0)
    second = write_tiny_gguf(tmp_path / "b.gguf", seed=2.0)
    for path, tag in ((first, "a"), (second, "b")):
        await stub.Package(registry_pb2.PackageRequest(gguf_path=str(path), tag=tag), timeout=10)
    await stub.TagModel(registry_pb2.TagModelRequest(source="a", target="a:v2"), timeout=10)
    assert len(stored_files(settings.models_path)) == 6

    reply = await stub.Purge(registry_pb2.PurgeRequest(), timeout=10)

    assert (reply.deleted_models, reply.deleted_blobs) == (2, 6)
    assert stored_files(settings.models_path) == []
    listed = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=10)
    assert list(listed.models) == []
    again = await stub.Purge(registry_pb2.PurgeRequest(), timeout=10)
    assert (again.deleted_models, again.deleted_blobs) == (0, 0)
    # The store still works after a purge.
    await stub.Package(registry_pb2.PackageRequest(gguf_path=str(first), tag="a"), timeout=10)


async def test_purge_refuses_a_directory_that_is_not_a_store(
    stub: Stub, settings: RegistrySettings, tmp_path: Path
) -> None:
    tiny = write_tiny_gguf(tmp_path / "a.gguf")
    await stub.Package(registry_pb2.PackageRequest(gguf_path=str(tiny), tag="a"), timeout=10)
    (settings.models_path / "oci-layout").unlink()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Purge(registry_pb2.PurgeRequest(), timeout=10)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "oci-layout" in (caught.value.details() or "")
    assert len(stored_files(settings.models_path)) == 3
