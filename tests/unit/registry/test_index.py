"""index.json and oci-layout: OCI image-layout shape, atomic replacement, no lost updates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.registry.errors import ModelNotFound, StoreCorrupt
from services.registry.store.index import (
    REF_NAME_ANNOTATION,
    Index,
    IndexDocument,
    IndexEntry,
)
from services.registry.store.manifests import MEDIA_TYPE_MANIFEST

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def entry(digest: str) -> IndexEntry:
    return IndexEntry(MEDIA_TYPE_MANIFEST, digest, 100)


def tagger(tag: str, digest: str = DIGEST_A) -> Callable[[IndexDocument], IndexDocument]:
    return lambda document: document.with_tag(tag, entry(digest))


@pytest.fixture
async def index(tmp_path: Path) -> Index:
    index = Index(tmp_path / "models")
    await index.initialize()
    return index


async def test_initialize_writes_an_oci_image_layout(index: Index) -> None:
    root = index.path.parent
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads(index.path.read_text()) == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [],
    }


async def test_initialize_keeps_an_existing_index(index: Index) -> None:
    await index.update(lambda d: d.with_tag("ai/x:latest", entry(DIGEST_A)))
    await Index(index.path.parent).initialize()
    assert (await index.read()).tags_of(DIGEST_A) == ("ai/x:latest",)


async def test_initialize_refuses_a_foreign_layout_version(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion":"9.0.0"}')
    with pytest.raises(StoreCorrupt, match=r"9\.0\.0"):
        await Index(tmp_path).initialize()


async def test_tags_are_ref_name_annotations_one_descriptor_per_tag(index: Index) -> None:
    await index.update(lambda d: d.with_tag("ai/x:latest", entry(DIGEST_A)))
    await index.update(lambda d: d.with_tag("ai/x:v2", entry(DIGEST_A)))
    manifests = json.loads(index.path.read_text())["manifests"]
    assert [m["annotations"][REF_NAME_ANNOTATION] for m in manifests] == ["ai/x:latest", "ai/x:v2"]
    assert {m["digest"] for m in manifests} == {DIGEST_A}
    assert all(m["mediaType"] == MEDIA_TYPE_MANIFEST and m["size"] == 100 for m in manifests)


def test_moving_a_tag_leaves_the_old_model_listed_untagged() -> None:
    document = IndexDocument().with_tag("ai/x:latest", entry(DIGEST_A))
    document = document.with_tag("ai/x:latest", entry(DIGEST_B))
    assert document.tags_of(DIGEST_B) == ("ai/x:latest",)
    assert document.tags_of(DIGEST_A) == ()
    assert document.digests() == (DIGEST_A, DIGEST_B)
    # Re-tagging the dangling model reuses its descriptor instead of adding another.
    document = document.with_tag("ai/x:old", entry(DIGEST_A))
    assert len(document.entries) == 2


def test_without_digest_removes_every_tag() -> None:
    document = (
        IndexDocument()
        .with_tag("ai/x:1", entry(DIGEST_A))
        .with_tag("ai/x:2", entry(DIGEST_A))
        .with_tag("ai/y:1", entry(DIGEST_B))
    )
    assert document.without_digest(DIGEST_A).digests() == (DIGEST_B,)


async def test_concurrent_updates_are_never_lost(index: Index) -> None:
    tags = [f"ai/model:t{i}" for i in range(40)]

    await asyncio.gather(*(index.update(tagger(tag)) for tag in tags))
    on_disk = await Index(index.path.parent).read()
    assert sorted(on_disk.tags_of(DIGEST_A)) == sorted(tags)


async def test_concurrent_tag_and_untag_serialize(index: Index) -> None:
    await index.update(lambda d: d.with_tag("ai/keep:1", entry(DIGEST_A)))
    await asyncio.gather(
        index.update(lambda d: d.with_tag("ai/new:1", entry(DIGEST_B))),
        index.update(lambda d: d.without_tag("ai/keep:1")),
        index.update(lambda d: d.with_tag("ai/new:2", entry(DIGEST_B))),
    )
    document = await index.read()
    assert document.tags_of(DIGEST_B) == ("ai/new:1", "ai/new:2")
    assert document.tags_of(DIGEST_A) == ()


async def test_a_failing_change_writes_nothing(index: Index) -> None:
    await index.update(lambda d: d.with_tag("ai/x:latest", entry(DIGEST_A)))
    before = index.path.read_bytes()

    def fail(document: IndexDocument) -> IndexDocument:
        raise ModelNotFound("ai/gone")

    with pytest.raises(ModelNotFound):
        await index.update(fail)
    assert index.path.read_bytes() == before


async def test_updates_leave_no_temporary_files(index: Index) -> None:
    for tag in ("ai/x:1", "ai/x:2", "ai/x:3"):
        await index.update(tagger(tag))
    assert sorted(p.name for p in index.path.parent.iterdir()) == ["index.json", "oci-layout"]


async def test_unknown_fields_and_entries_survive_a_rewrite(index: Index) -> None:
    foreign: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": DIGEST_B,
                "size": 5,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
        "annotations": {"org.example": "kept"},
    }
    index.path.write_text(json.dumps(foreign))
    await index.update(lambda d: d.with_tag("ai/x:latest", entry(DIGEST_A)))
    written = json.loads(index.path.read_text())
    assert written["annotations"] == {"org.example": "kept"}
    assert written["manifests"][0] == foreign["manifests"][0]


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"schemaVersion": 1, "manifests": []}',
        '{"schemaVersion": 2, "manifests": [{"digest": "sha256:../../x", "mediaType": "m", "size": 1}]}',
        json.dumps(
            {"schemaVersion": 2, "manifests": [{"digest": DIGEST_A, "mediaType": "m", "size": -1}]}
        ),
    ],
)
async def test_corrupt_index_is_reported(index: Index, content: str) -> None:
    index.path.write_text(content)
    with pytest.raises(StoreCorrupt):
        await index.read()
