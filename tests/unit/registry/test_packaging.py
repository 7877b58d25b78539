"""Packaging the real SmolLM2 GGUF into a DMR-compatible artifact, and rejecting bad input."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.registry.errors import (
    InvalidArgument,
    InvalidModelFile,
    PermissionDenied,
    SourceFileNotFound,
)
from services.registry.model_store import Model, ModelStore
from services.registry.packaging import Packager, PackageSpec

from .conftest import TinyFactory, open_store, smollm2_path, stored_files

CONFIG_TYPE = "application/vnd.docker.ai.model.config.v0.1+json"
GGUF_TYPE = "application/vnd.docker.ai.gguf.v3"


@dataclass(frozen=True)
class Packaged:
    store: ModelStore
    packager: Packager
    model: Model
    source: Path


@pytest.fixture(scope="module")
async def smollm2(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Packaged]:
    """SmolLM2 packaged once for the whole module (98 MB: hashed, copied, parsed)."""
    source = smollm2_path()
    store = await open_store(tmp_path_factory.mktemp("smollm2") / "models")
    packager = Packager(store, max_text_file_bytes=1 << 20)
    model = await packager.package(PackageSpec(gguf_path=str(source), tag="ai/smollm2"))
    yield Packaged(store, packager, model, source)


def blob(store: ModelStore, digest: str) -> bytes:
    return store.blobs.path(digest).read_bytes()


async def test_config_values_come_from_the_gguf(smollm2: Packaged) -> None:
    config = smollm2.model.config
    assert config.format == "gguf"
    assert config.architecture == "llama"
    assert config.quantization == "Q4_1"
    assert config.parameters == "134.52M"
    assert config.size == "92.10MiB"
    assert config.context_size == 8192
    assert config.gguf["general.architecture"] == "llama"
    assert config.gguf["llama.context_length"] == "8192"
    assert config.gguf["general.languages"] == "en"
    assert config.gguf["tokenizer.chat_template"].startswith("{% for message in messages %}")
    # Token lists and merges (49152 entries) are left out, as DMR does.
    assert "tokenizer.ggml.tokens" not in config.gguf
    assert "tokenizer.ggml.merges" not in config.gguf


async def test_model_id_is_the_manifest_digest(smollm2: Packaged) -> None:
    manifest = blob(smollm2.store, smollm2.model.id)
    assert smollm2.model.id == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert smollm2.model.tags == ("ai/smollm2:latest",)


async def test_manifest_is_dmr_shaped(smollm2: Packaged) -> None:
    manifest = json.loads(blob(smollm2.store, smollm2.model.id))
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert "artifactType" not in manifest
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    [layer] = manifest["layers"]
    size = smollm2.source.stat().st_size
    assert layer["mediaType"] == GGUF_TYPE
    assert layer["size"] == size
    annotations = layer["annotations"]
    assert annotations["org.cncf.model.filepath"] == smollm2.source.name
    assert annotations["org.cncf.model.file.mediatype.untested"] == "false"
    assert "org.opencontainers.image.title" not in annotations
    metadata = json.loads(annotations["org.cncf.model.file.metadata+json"])
    assert list(metadata) == ["name", "mode", "uid", "gid", "size", "mtime", "typeflag"]
    assert metadata["name"] == smollm2.source.name
    assert metadata["size"] == size
    assert (metadata["uid"], metadata["gid"], metadata["typeflag"]) == (0, 0, 0)
    assert metadata["mtime"].endswith("Z")


async def test_layer_blob_is_the_gguf_file(smollm2: Packaged) -> None:
    [layer] = smollm2.model.layers
    expected = hashlib.sha256(smollm2.source.read_bytes()).hexdigest()
    assert layer.digest == "sha256:" + expected
    assert hashlib.sha256(blob(smollm2.store, layer.digest)).hexdigest() == expected


async def test_config_blob_is_dmr_shaped(smollm2: Packaged) -> None:
    descriptor = smollm2.model.config_descriptor
    assert descriptor.media_type == CONFIG_TYPE
    raw = blob(smollm2.store, descriptor.digest)
    assert descriptor.size == len(raw)
    config = json.loads(raw)
    assert list(config) == ["config", "descriptor", "rootfs"]
    assert list(config["config"]) == [
        "format",
        "quantization",
        "parameters",
        "architecture",
        "size",
        "gguf",
        "context_size",
    ]
    assert config["config"]["context_size"] == 8192
    assert config["descriptor"]["created"].endswith("Z")
    assert config["rootfs"] == {
        "type": "rootfs",
        "diff_ids": [layer.digest for layer in smollm2.model.layers],
    }
    assert all(isinstance(v, str) for v in config["config"]["gguf"].values())
    # Go's encoding/json escapes <, > and & inside strings; the template has <|im_start|>.
    assert b"<|im_start|>" not in raw and b"\\u003c|im_start|\\u003e" in raw


async def test_store_is_an_oci_image_layout(smollm2: Packaged) -> None:
    root = smollm2.store.root
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert index["manifests"] == [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": smollm2.model.id,
            "size": len(blob(smollm2.store, smollm2.model.id)),
            "annotations": {"org.opencontainers.image.ref.name": "ai/smollm2:latest"},
        }
    ]
    expected = {smollm2.model.id, smollm2.model.config_descriptor.digest}
    expected |= {layer.digest for layer in smollm2.model.layers}
    assert set(stored_files(root)) == {f"sha256/{d[7:]}" for d in expected}


async def test_packaging_again_is_idempotent_and_retags(smollm2: Packaged) -> None:
    before = stored_files(smollm2.store.root)
    again = await smollm2.packager.package(
        PackageSpec(gguf_path=str(smollm2.source), tag="ai/smollm2:135m")
    )
    assert again.id == smollm2.model.id
    assert again.tags == ("ai/smollm2:latest", "ai/smollm2:135m")
    assert stored_files(smollm2.store.root) == before
    await smollm2.store.delete("ai/smollm2:135m")


async def test_context_size_override(packager: Packager, tiny_gguf: TinyFactory) -> None:
    path = tiny_gguf(context_length=2048)
    default = await packager.package(PackageSpec(gguf_path=str(path), tag="tiny:default"))
    bigger = await packager.package(
        PackageSpec(gguf_path=str(path), tag="tiny:4k", context_size=4096)
    )
    assert default.config.context_size == 2048
    assert bigger.config.context_size == 4096
    assert bigger.id != default.id
    assert bigger.layers == default.layers


async def test_license_and_chat_template_layers(
    packager: Packager, store: ModelStore, tiny_gguf: TinyFactory, tmp_path: Path
) -> None:
    license_file = tmp_path / "LICENSE"
    license_file.write_text("Apache License 2.0\n")
    template = tmp_path / "template.jinja"
    template.write_text("{{ messages }}")
    model = await packager.package(
        PackageSpec(
            gguf_path=str(tiny_gguf()),
            tag="tiny",
            license_path=str(license_file),
            chat_template_path=str(template),
        )
    )
    assert [layer.media_type for layer in model.layers] == [
        GGUF_TYPE,
        "application/vnd.docker.ai.license",
        "application/vnd.docker.ai.chat.template.jinja",
    ]
    assert model.layers[1].annotations["org.cncf.model.filepath"] == "LICENSE"
    assert model.layers[2].annotations["org.cncf.model.filepath"] == "template.jinja"
    config = json.loads(blob(store, model.config_descriptor.digest))
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in model.layers]


def _nothing_written(store: ModelStore) -> None:
    assert stored_files(store.root) == []
    index = json.loads((store.root / "index.json").read_text())
    assert index["manifests"] == []


async def test_missing_file_is_not_found(packager: Packager, store: ModelStore) -> None:
    with pytest.raises(SourceFileNotFound, match="does not exist"):
        await packager.package(PackageSpec(gguf_path="/nonexistent/model.gguf", tag="x"))
    _nothing_written(store)


async def test_directory_is_rejected(packager: Packager, store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match="directory"):
        await packager.package(PackageSpec(gguf_path=str(tmp_path), tag="x"))
    _nothing_written(store)


@pytest.mark.parametrize(
    "content", [b"", b"plain text, not a model\n", b"GGUF\x03\x00\x00\x00\xff"]
)
async def test_non_gguf_file_is_rejected_with_nothing_written(
    packager: Packager, store: ModelStore, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile):
        await packager.package(PackageSpec(gguf_path=str(path), tag="x"))
    _nothing_written(store)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
async def test_unreadable_file_is_rejected(
    packager: Packager, store: ModelStore, tiny_gguf: TinyFactory
) -> None:
    path = tiny_gguf()
    path.chmod(0)
    with pytest.raises(InvalidModelFile, match="not readable"):
        await packager.package(PackageSpec(gguf_path=str(path), tag="x"))
    _nothing_written(store)


async def test_fifo_is_rejected(packager: Packager, store: ModelStore, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(InvalidModelFile, match="not a regular file"):
        await packager.package(PackageSpec(gguf_path=str(fifo), tag="x"))
    _nothing_written(store)


@pytest.mark.parametrize(
    ("tag", "context_size"),
    [("", 0), ("Bad/Upper", 0), ("ai/x@sha256:" + "a" * 64, 0), ("ok", -1)],
)
async def test_invalid_requests_are_rejected(
    packager: Packager, store: ModelStore, tiny_gguf: TinyFactory, tag: str, context_size: int
) -> None:
    spec = PackageSpec(gguf_path=str(tiny_gguf()), tag=tag, context_size=context_size)
    with pytest.raises(InvalidArgument):
        await packager.package(spec)
    _nothing_written(store)


async def test_binary_license_is_rejected(
    packager: Packager, store: ModelStore, tiny_gguf: TinyFactory, tmp_path: Path
) -> None:
    license_file = tmp_path / "LICENSE"
    license_file.write_bytes(b"\xff\xfe\x00binary")
    spec = PackageSpec(gguf_path=str(tiny_gguf()), tag="x", license_path=str(license_file))
    with pytest.raises(InvalidModelFile, match="UTF-8"):
        await packager.package(spec)
    _nothing_written(store)


async def test_paths_outside_the_allowed_directories_are_refused(
    store: ModelStore, tiny_gguf: TinyFactory, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    packager = Packager(store, allowed_dirs=[allowed], max_text_file_bytes=1 << 20)
    outside = tiny_gguf()
    with pytest.raises(PermissionDenied):
        await packager.package(PackageSpec(gguf_path=str(outside), tag="x"))
    # A symlink inside the allowed directory does not smuggle the outside file in.
    (allowed / "link.gguf").symlink_to(outside)
    with pytest.raises(PermissionDenied):
        await packager.package(PackageSpec(gguf_path=str(allowed / "link.gguf"), tag="x"))
    _nothing_written(store)
    inside = allowed / "model.gguf"
    inside.write_bytes(outside.read_bytes())
    model = await packager.package(PackageSpec(gguf_path=str(inside), tag="x"))
    assert model.tags == ("ai/x:latest",)


async def test_failed_publish_leaves_no_orphan_blobs(
    packager: Packager, store: ModelStore, tiny_gguf: TinyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_add_model(manifest: bytes, tags: object) -> Model:
        raise OSError("disk full")

    monkeypatch.setattr(store, "add_model", broken_add_model)
    with pytest.raises(OSError, match="disk full"):
        await packager.package(PackageSpec(gguf_path=str(tiny_gguf()), tag="x"))
    _nothing_written(store)


async def test_layer_is_named_after_the_path_given_not_a_symlink_target(
    packager: Packager, tiny_gguf: TinyFactory, tmp_path: Path
) -> None:
    target = tiny_gguf("sha256-0123abcd")
    link = tmp_path / "friendly-name.gguf"
    link.symlink_to(target)
    model = await packager.package(PackageSpec(gguf_path=str(link), tag="x"))
    annotations = model.layers[0].annotations
    assert annotations["org.cncf.model.filepath"] == "friendly-name.gguf"
    assert json.loads(annotations["org.cncf.model.file.metadata+json"])["name"] == (
        "friendly-name.gguf"
    )
