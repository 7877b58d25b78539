"""List, inspect, tag and delete models; garbage collection of unreferenced blobs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.registry.errors import (
    BlobNotFound,
    Conflict,
    InvalidArgument,
    ModelNotFound,
    StoreCorrupt,
)
from services.registry.model_store import DeleteResult, Model, ModelStore
from services.registry.packaging import Packager, PackageSpec
from services.registry.store.manifests import (
    MEDIA_TYPE_CONFIG_V01,
    MEDIA_TYPE_GGUF,
    Descriptor,
    build_manifest,
)

from .conftest import TinyFactory, open_store, stored_files


async def package(packager: Packager, path: Path, tag: str, context_size: int = 0) -> Model:
    spec = PackageSpec(gguf_path=str(path), tag=tag, context_size=context_size)
    return await packager.package(spec)


def blob_names(model: Model) -> set[str]:
    digests = {model.id, model.config_descriptor.digest, *(layer.digest for layer in model.layers)}
    return {f"sha256/{d[7:]}" for d in digests}


@pytest.fixture
async def two_models(packager: Packager, tiny_gguf: TinyFactory) -> tuple[Model, Model]:
    first = await package(packager, tiny_gguf("a.gguf", seed=1.0), "ai/alpha")
    second = await package(packager, tiny_gguf("b.gguf", seed=2.0), "myorg/beta:v1")
    return first, second


async def test_list_models(store: ModelStore, two_models: tuple[Model, Model]) -> None:
    models = await store.list_models()
    assert [m.id for m in models] == [m.id for m in two_models]
    assert [m.tags for m in models] == [("ai/alpha:latest",), ("myorg/beta:v1",)]
    assert all(m.config.architecture == "llama" for m in models)
    assert all(m.created > 0 for m in models)


@pytest.mark.parametrize(
    "reference",
    ["ai/alpha:latest", "ai/alpha", "alpha", "alpha:latest", "index.docker.io/ai/alpha"],
)
async def test_inspect_by_tag_and_normalized_name(
    store: ModelStore, two_models: tuple[Model, Model], reference: str
) -> None:
    assert (await store.inspect(reference)).id == two_models[0].id


async def test_inspect_by_partial_name(store: ModelStore, two_models: tuple[Model, Model]) -> None:
    # "beta" normalizes to ai/beta:latest, which is absent; DMR then matches the name part.
    assert (await store.inspect("beta")).id == two_models[1].id
    with pytest.raises(ModelNotFound):
        await store.inspect("bet")
    with pytest.raises(ModelNotFound):
        await store.inspect("beta:v2")


async def test_inspect_by_id_and_id_prefixes(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    model = two_models[1]
    hex_id = model.id.removeprefix("sha256:")
    for reference in (model.id, hex_id, hex_id[:12], f"myorg/beta@{model.id}"):
        assert (await store.inspect(reference)).id == model.id
    with pytest.raises(ModelNotFound):
        await store.inspect("sha256:" + "0" * 64)
    with pytest.raises(ModelNotFound):
        await store.inspect("0" * 12)


@pytest.mark.parametrize(
    "reference", ["", "   ", "UPPER/case", "a b", "ai/x:bad:tag", "ai/x@sha256:zz"]
)
async def test_inspect_rejects_malformed_references(store: ModelStore, reference: str) -> None:
    with pytest.raises(InvalidArgument):
        await store.inspect(reference)


async def test_tag_adds_a_reference(store: ModelStore, two_models: tuple[Model, Model]) -> None:
    target, model = await store.tag("alpha", "registry.example.com:5000/team/alpha:prod")
    assert target == "registry.example.com:5000/team/alpha:prod"
    assert model.id == two_models[0].id
    assert model.tags == ("ai/alpha:latest", target)
    assert (await store.inspect(target)).id == model.id


async def test_tag_by_id_prefix(store: ModelStore, two_models: tuple[Model, Model]) -> None:
    target, model = await store.tag(two_models[1].id[7:19], "beta2")
    assert (target, model.id) == ("ai/beta2:latest", two_models[1].id)


async def test_tag_unknown_source_is_not_found(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound):
        await store.tag("ai/missing", "ai/new")
    assert json.loads((store.root / "index.json").read_text())["manifests"] == []


async def test_tag_rejects_a_digest_target(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    with pytest.raises(InvalidArgument):
        await store.tag("alpha", "ai/alpha@" + two_models[0].id)


async def test_moving_a_tag_leaves_the_old_model_dangling(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    await store.tag("beta", "ai/alpha")
    models = {m.id: m.tags for m in await store.list_models()}
    assert models[two_models[0].id] == ()
    assert models[two_models[1].id] == ("myorg/beta:v1", "ai/alpha:latest")
    result = await store.delete(two_models[0].id)
    assert result == DeleteResult(untagged=(), deleted=(two_models[0].id,))


async def test_delete_last_tag_deletes_the_model_and_its_blobs(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    alpha, beta = two_models
    result = await store.delete("alpha")
    assert result.actions() == [{"Untagged": "ai/alpha:latest"}, {"Deleted": alpha.id}]
    assert set(stored_files(store.root)) == blob_names(beta)
    with pytest.raises(ModelNotFound):
        await store.inspect(alpha.id)


async def test_delete_one_tag_of_several_only_untags(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    alpha = two_models[0]
    await store.tag("alpha", "ai/alpha:v2")
    result = await store.delete("ai/alpha:v2")
    assert result.actions() == [{"Untagged": "ai/alpha:v2"}]
    assert (await store.inspect(alpha.id)).tags == ("ai/alpha:latest",)
    assert blob_names(alpha) <= set(stored_files(store.root))


async def test_delete_by_id_of_a_multi_tag_model_needs_force(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    alpha = two_models[0]
    await store.tag("alpha", "ai/alpha:v2")
    for reference in (alpha.id, alpha.id[7:19], f"ai/alpha@{alpha.id}"):
        with pytest.raises(Conflict, match="must be forced"):
            await store.delete(reference)
    assert (await store.inspect(alpha.id)).tags == ("ai/alpha:latest", "ai/alpha:v2")
    result = await store.delete(alpha.id[7:19], force=True)
    assert result.actions() == [
        {"Untagged": "ai/alpha:latest"},
        {"Untagged": "ai/alpha:v2"},
        {"Deleted": alpha.id},
    ]
    assert not blob_names(alpha) & set(stored_files(store.root))


async def test_delete_unknown_and_partial_names_are_not_found(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    with pytest.raises(ModelNotFound):
        await store.delete("ai/missing")
    # Partial-name matching is for lookups only, never for deletion (as in DMR).
    with pytest.raises(ModelNotFound):
        await store.delete("beta")


async def test_blob_shared_by_two_models_survives_deleting_one(
    store: ModelStore, packager: Packager, tiny_gguf: TinyFactory
) -> None:
    path = tiny_gguf()
    small = await package(packager, path, "ai/tiny:2k")
    large = await package(packager, path, "ai/tiny:8k", context_size=8192)
    assert small.id != large.id
    assert small.layers == large.layers
    await store.delete("ai/tiny:2k")
    assert set(stored_files(store.root)) == blob_names(large)
    await store.delete("ai/tiny:8k")
    assert stored_files(store.root) == []


async def test_concurrent_tags_and_deletes_lose_nothing(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    await asyncio.gather(*(store.tag("alpha", f"ai/alpha:c{i}") for i in range(20)))
    await asyncio.gather(
        *(store.delete(f"ai/alpha:c{i}") for i in range(0, 20, 2)),
        *(store.tag("beta", f"ai/beta:c{i}") for i in range(10)),
    )
    reopened = await open_store(store.root)
    tags = {m.id: set(m.tags) for m in await reopened.list_models()}
    assert tags[two_models[0].id] == {"ai/alpha:latest"} | {
        f"ai/alpha:c{i}" for i in range(1, 20, 2)
    }
    assert tags[two_models[1].id] == {"myorg/beta:v1"} | {f"ai/beta:c{i}" for i in range(10)}


async def test_add_model_refuses_a_manifest_with_missing_blobs(store: ModelStore) -> None:
    config_digest = await store.blobs.write_bytes(b'{"config":{"format":"gguf"}}')
    missing = Descriptor(MEDIA_TYPE_GGUF, "sha256:" + "c" * 64, 10)
    config = Descriptor(MEDIA_TYPE_CONFIG_V01, config_digest, 28)
    with pytest.raises(StoreCorrupt, match="missing"):
        await store.add_model(build_manifest(config, [missing]), ["ai/broken"])
    assert await store.list_models() == []


async def test_add_model_refuses_a_size_mismatch(store: ModelStore) -> None:
    config_digest = await store.blobs.write_bytes(b'{"config":{"format":"gguf"}}')
    config = Descriptor(MEDIA_TYPE_CONFIG_V01, config_digest, 999)
    with pytest.raises(StoreCorrupt, match="999"):
        await store.add_model(build_manifest(config, []), ["ai/broken"])


async def test_garbage_collection_spares_pinned_blobs(store: ModelStore) -> None:
    digest = await store.blobs.write_bytes(b"layer being written")
    with store.pin_session() as pins:
        pins.add(digest)
        assert await store.discard([digest]) == []
    assert await store.discard([digest]) == [digest]
    with pytest.raises(BlobNotFound):
        await store.blobs.size(digest)


async def test_list_skips_models_whose_manifest_is_gone(
    store: ModelStore, two_models: tuple[Model, Model]
) -> None:
    store.blobs.path(two_models[0].id).unlink()
    assert [m.id for m in await store.list_models()] == [two_models[1].id]
    with pytest.raises(ModelNotFound):
        await store.inspect("alpha")


async def test_with_another_default_registry_docker_hub_models_keep_their_host(
    tmp_path: Path, tiny_gguf: TinyFactory
) -> None:
    """DEFAULT_REGISTRY=registry.lan: `ai/x` is registry.lan's model, `docker.io/ai/x` Docker
    Hub's; they must not share the local name `ai/x` (the second would silently replace the
    first)."""
    store = await open_store(tmp_path / "models", default_registry="registry.lan")
    packager = Packager(store, max_text_file_bytes=1 << 20)
    assert store.tag_for("ai/x:v1") == "ai/x:v1"
    assert store.tag_for("registry.lan/ai/x:v1") == "ai/x:v1"
    assert store.tag_for("docker.io/ai/x:v1") == "docker.io/ai/x:v1"
    assert store.tag_for("index.docker.io/ai/x:v1") == "docker.io/ai/x:v1"

    local = await packager.package(PackageSpec(gguf_path=str(tiny_gguf(seed=1.0)), tag="ai/x:v1"))
    hub = await packager.package(
        PackageSpec(gguf_path=str(tiny_gguf("hub.gguf", seed=2.0)), tag="docker.io/ai/x:v1")
    )
    assert local.id != hub.id
    assert (await store.inspect("ai/x:v1")).id == local.id
    assert (await store.inspect("registry.lan/ai/x:v1")).id == local.id
    assert (await store.inspect("docker.io/ai/x:v1")).id == hub.id
    assert sorted(tag for model in await store.list_models() for tag in model.tags) == [
        "ai/x:v1",
        "docker.io/ai/x:v1",
    ]
