"""Reading DMR's config values out of GGUF files."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from services.registry.errors import InvalidModelFile
from services.registry.gguf_metadata import (
    format_parameters,
    format_size,
    has_gguf_magic,
    read_gguf_info,
)

from .conftest import TinyFactory


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "0"),
        (999, "999"),
        (1_500, "1.50K"),
        (134_515_008, "134.52M"),
        (16_780_000, "16.78M"),
        (1_100_048_384, "1.10B"),
        (70_553_706_496, "70.55B"),
        (2_000_000_000_000, "2.00T"),
    ],
)
def test_format_parameters(count: int, expected: str) -> None:
    assert format_parameters(count) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (2048, "2.00KiB"),
        (96_576_768, "92.10MiB"),
        (268_803_000, "256.35MiB"),
        (4_920_000_000, "4.58GiB"),
        (5 * 2**40, "5.00TiB"),
    ],
)
def test_format_size(size: int, expected: str) -> None:
    assert format_size(size) == expected


def test_tiny_gguf_metadata(tiny_gguf: TinyFactory) -> None:
    info = read_gguf_info(tiny_gguf(context_length=4096))
    assert info.architecture == "llama"
    assert info.quantization == "F32"
    assert info.parameter_count == 4 * 8 + 8
    assert info.tensor_bytes == 40 * 4
    assert info.context_length == 4096
    assert info.metadata["test.small"] == "1, 2, 3"
    assert info.metadata["test.names"] == "a, b"
    assert info.metadata["test.flag"] == "true"
    assert info.metadata["test.ratio"] == "0.500000"
    assert info.metadata["llama.context_length"] == "4096"
    assert info.metadata["tokenizer.chat_template"] == "<|im_start|>{{ content }} & more"
    # DMR leaves out arrays longer than 50 elements, and the reader's synthetic header fields.
    assert "test.big" not in info.metadata
    assert not any(key.startswith("GGUF.") for key in info.metadata)


@pytest.mark.parametrize(
    "content", [b"", b"GGU", b"not a gguf file at all", b"GGUF\x03\x00\x00\x00truncated"]
)
def test_non_gguf_content_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile):
        read_gguf_info(path)


def test_magic_check(tmp_path: Path, tiny_gguf: TinyFactory) -> None:
    assert has_gguf_magic(tiny_gguf())
    other = tmp_path / "other.bin"
    other.write_bytes(b"PK\x03\x04")
    assert not has_gguf_magic(other)


def _header(*, version: int = 3, tensors: int = 0, kvs: int = 1) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # An array claiming 2**60 u32 elements: the gguf reader would loop on this forever.
        (_header() + _key("a") + struct.pack("<IIQ", 9, 4, 2**60) + b"\0" * 64, "array data"),
        # ... and 2**60 strings.
        (_header() + _key("a") + struct.pack("<IIQ", 9, 8, 2**60) + b"\0" * 64, "array length"),
        (_header(kvs=2**62) + b"\0" * 64, "exceed the file size"),
        (_header(tensors=2**62) + b"\0" * 64, "exceed the file size"),
        (_header(version=1) + b"\0" * 64, "unsupported GGUF version 1"),
        (_header() + _key("a") + struct.pack("<I", 77) + b"\0" * 64, "unknown GGUF value type"),
        (_header() + struct.pack("<Q", 2**40) + b"key" + b"\0" * 20, "key"),
        (
            _header(tensors=1, kvs=0) + _key("t") + struct.pack("<I", 1000) + b"\0" * 64,
            "dimensions",
        ),
    ],
    ids=[
        "huge-number-array",
        "huge-string-array",
        "huge-kv-count",
        "huge-tensor-count",
        "version-1",
        "unknown-type",
        "huge-key",
        "too-many-dims",
    ],
)
def test_crafted_headers_are_rejected_quickly(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "crafted.gguf"
    path.write_bytes(content)
    started = time.monotonic()
    with pytest.raises(InvalidModelFile, match=message):
        read_gguf_info(path)
    assert time.monotonic() - started < 1.0
