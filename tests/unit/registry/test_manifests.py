"""Manifest and config formats: Go-compatible JSON, validation of what is read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.registry.errors import StoreCorrupt
from services.registry.store.manifests import (
    MEDIA_TYPE_CNCF_CONFIG,
    MEDIA_TYPE_CONFIG_V01,
    MEDIA_TYPE_GGUF,
    ConfigFile,
    Descriptor,
    ModelConfig,
    build_config,
    build_manifest,
    format_go_time,
    format_go_time_ns,
    go_json,
    parse_config,
    parse_manifest,
)

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def test_go_json_escapes_like_encoding_json() -> None:
    value = {"t": "<|im_start|> & \u2028 é"}
    assert go_json(value) == b'{"t":"\\u003c|im_start|\\u003e \\u0026 \\u2028 \xc3\xa9"}'
    assert json.loads(go_json(value)) == value


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2025, 1, 1, tzinfo=UTC), "2025-01-01T00:00:00Z"),
        (datetime(2025, 1, 1, 0, 0, 0, 120000, tzinfo=UTC), "2025-01-01T00:00:00.12Z"),
    ],
)
def test_go_time_format(moment: datetime, expected: str) -> None:
    assert format_go_time(moment) == expected


def test_go_time_keeps_nanoseconds() -> None:
    assert format_go_time_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def test_manifest_round_trip_in_dmr_field_order() -> None:
    layer = Descriptor(MEDIA_TYPE_GGUF, DIGEST_B, 10, {"z": "1", "a": "2"})
    data = build_manifest(Descriptor(MEDIA_TYPE_CONFIG_V01, DIGEST_A, 5), [layer])
    assert data.startswith(
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.docker.ai.model.config.v0.1+json",'
        b'"size":5,"digest":"' + DIGEST_A.encode()
    )
    assert b"artifactType" not in data
    assert b'"annotations":{"a":"2","z":"1"}' in data
    manifest = parse_manifest(data)
    assert manifest.config.digest == DIGEST_A
    assert manifest.layers == (layer,)
    assert manifest.blob_digests() == (DIGEST_A, DIGEST_B)


def _manifest(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": MEDIA_TYPE_CONFIG_V01, "digest": DIGEST_A, "size": 1},
        "layers": [{"mediaType": MEDIA_TYPE_GGUF, "digest": DIGEST_B, "size": 2}],
    }
    body.update(overrides)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b"[]",
        _manifest(schemaVersion=1),
        _manifest(mediaType="application/vnd.oci.image.index.v1+json"),
        _manifest(layers=None),
        _manifest(layers=[{"mediaType": MEDIA_TYPE_GGUF, "digest": "sha256:../../x", "size": 1}]),
        _manifest(config={"mediaType": MEDIA_TYPE_CONFIG_V01, "digest": DIGEST_A, "size": -1}),
        _manifest(config={"digest": DIGEST_A, "size": 1}),
    ],
)
def test_invalid_manifests_are_rejected(data: bytes) -> None:
    with pytest.raises(StoreCorrupt):
        parse_manifest(data)


def test_config_in_dmr_shape_round_trips() -> None:
    created = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    config_file = ConfigFile(
        config=ModelConfig(
            format="gguf",
            quantization="Q4_1",
            parameters="134.52M",
            architecture="llama",
            size="92.10MiB",
            gguf={"b": "2", "a": "1"},
            context_size=8192,
        ),
        created=created,
        diff_ids=(DIGEST_B,),
    )
    data = build_config(config_file)
    assert json.loads(data) == {
        "config": {
            "format": "gguf",
            "quantization": "Q4_1",
            "parameters": "134.52M",
            "architecture": "llama",
            "size": "92.10MiB",
            "gguf": {"a": "1", "b": "2"},
            "context_size": 8192,
        },
        "descriptor": {"created": "2025-06-01T12:00:00Z"},
        "rootfs": {"type": "rootfs", "diff_ids": [DIGEST_B]},
    }
    assert list(json.loads(data)) == ["config", "descriptor", "rootfs"]
    assert parse_config(MEDIA_TYPE_CONFIG_V01, data) == config_file


def test_empty_fields_are_omitted_like_go_omitempty() -> None:
    data = build_config(ConfigFile(ModelConfig(format="gguf"), None, ()))
    assert json.loads(data) == {
        "config": {"format": "gguf"},
        "descriptor": {},
        "rootfs": {"type": "rootfs", "diff_ids": []},
    }


def test_go_nanosecond_timestamps_parse() -> None:
    data = b'{"config":{},"descriptor":{"created":"2025-01-02T03:04:05.123456789Z"}}'
    created = parse_config(MEDIA_TYPE_CONFIG_V01, data).created
    assert created == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_cncf_config_is_normalized_to_dmr_shape() -> None:
    data = json.dumps(
        {
            "descriptor": {"createdAt": "2025-01-01T00:00:00Z", "family": "llama"},
            "config": {"format": "gguf", "paramSize": "135M", "quantization": "Q4_1"},
            "modelfs": {"type": "layers", "diffIds": [DIGEST_B]},
        }
    ).encode()
    parsed = parse_config(MEDIA_TYPE_CNCF_CONFIG, data)
    assert parsed.config == ModelConfig(
        format="gguf", quantization="Q4_1", parameters="135M", architecture="llama"
    )
    assert parsed.diff_ids == (DIGEST_B,)


def test_unsupported_config_type_is_rejected() -> None:
    with pytest.raises(StoreCorrupt, match="not supported"):
        parse_config("application/vnd.oci.image.config.v1+json", b"{}")
