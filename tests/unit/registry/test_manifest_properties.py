"""Property tests for everything that parses bytes a registry or a disk hands us: manifests,
configs, index.json and upstream error bodies never raise anything but the documented error."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.registry.errors import RegistryError, StoreCorrupt
from services.registry.oci import RemoteManifest, error_detail
from services.registry.pull import check_manifest
from services.registry.store.index import IndexDocument, decode_index
from services.registry.store.manifests import (
    CONFIG_MEDIA_TYPES,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    build_manifest,
    parse_config,
    parse_manifest,
)

DEEP = b"[" * 100_000 + b"]" * 100_000
HEX = "a" * 64

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
# Objects shaped like the real thing, with any field replaced by anything.
descriptors = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.one_of(st.sampled_from(sorted(CONFIG_MEDIA_TYPES)), json_values),
        "digest": st.one_of(st.just(f"sha256:{HEX}"), st.just(f"sha512:{HEX}"), json_values),
        "size": st.one_of(st.integers(-5, 10**12), json_values),
        "annotations": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5)), json_values),
    },
)  # fmt: skip
manifests = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.one_of(st.just(2), json_values),
        "mediaType": st.one_of(st.just(MEDIA_TYPE_MANIFEST), json_values),
        "config": st.one_of(descriptors, json_values),
        "layers": st.one_of(st.lists(st.one_of(descriptors, json_values), max_size=3), json_values),
        "annotations": json_values,
        "artifactType": json_values,
    },
)
documents = st.one_of(
    manifests.map(lambda value: json.dumps(value).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
)


@settings(max_examples=300)
@given(documents)
@example(DEEP)
@example(b"\xff\xfe")
@example(b'{"schemaVersion": 2, "layers": [], "config": {"mediaType": "x", "digest": 5}}')
def test_parse_manifest_raises_only_store_corrupt(data: bytes) -> None:
    try:
        manifest = parse_manifest(data)
    except StoreCorrupt:
        return
    assert all(
        descriptor.digest.startswith(("sha256:", "sha512:"))
        for descriptor in (manifest.config, *manifest.layers)
    )


@settings(max_examples=200)
@given(documents)
@example(DEEP)
def test_check_manifest_raises_only_registry_errors(data: bytes) -> None:
    with contextlib.suppress(RegistryError):
        check_manifest(RemoteManifest(data=data, media_type="", digest=f"sha256:{HEX}"))


config_documents = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "config": st.dictionaries(
                st.sampled_from(["format", "context_size", "gguf", "paramSize", "size"]),
                json_values,
            ),
            "descriptor": st.dictionaries(st.sampled_from(["created", "createdAt"]), json_values),
            "rootfs": st.dictionaries(st.just("diff_ids"), json_values),
            "modelfs": st.dictionaries(st.just("diffIds"), json_values),
        },
    ).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=100),
)


@settings(max_examples=200)
@given(st.sampled_from(sorted(CONFIG_MEDIA_TYPES)), config_documents)
@example(sorted(CONFIG_MEDIA_TYPES)[0], DEEP)
@example(
    sorted(CONFIG_MEDIA_TYPES)[0], b'{"descriptor": {"created": "2024-13-99T99:99:99.1234567890Z"}}'
)
def test_parse_config_raises_only_store_corrupt(media_type: str, data: bytes) -> None:
    with contextlib.suppress(StoreCorrupt):
        parse_config(media_type, data)


@settings(max_examples=200)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {"schemaVersion": st.just(2)},
            optional={"manifests": st.one_of(st.lists(st.one_of(descriptors, json_values), max_size=3), json_values)},
        ).map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=100),
    )
)  # fmt: skip
@example(DEEP)
def test_index_json_raises_only_store_corrupt(data: bytes) -> None:
    try:
        document = decode_index(data)
    except StoreCorrupt:
        return
    assert isinstance(document, IndexDocument)


@given(st.binary(max_size=200))
@example(DEEP)
@example(b"[1]")
@example(b'{"errors": "x"}')
def test_error_detail_never_raises(body: bytes) -> None:
    assert isinstance(error_detail(body, "fallback"), str)


@given(st.lists(descriptors, max_size=3), descriptors)
def test_built_manifests_parse_back(layers: list[dict[str, Any]], config: dict[str, Any]) -> None:
    try:
        parsed = [Descriptor.from_json(item, "test") for item in (config, *layers)]
    except StoreCorrupt:
        return
    manifest = parse_manifest(build_manifest(parsed[0], parsed[1:]))
    assert (manifest.config, *manifest.layers) == tuple(parsed)


def test_a_deeply_nested_manifest_is_store_corrupt_not_a_crash() -> None:
    with pytest.raises(StoreCorrupt, match="nested"):
        parse_manifest(DEEP)
