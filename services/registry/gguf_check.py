"""A bounded structural check of a GGUF header, run before `gguf.GGUFReader` sees the file.

The reader trusts the counts in the file: a header claiming an array of 2**60 elements makes it loop
(in a thread nobody can stop) until the process is killed. Package reads files a client names, so
this walk checks every count and length against the bytes actually left in the file, without
materializing any value. It blocks; call it through asyncio.to_thread.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from services.registry.errors import InvalidModelFile

__all__ = ["SUPPORTED_VERSIONS", "check_gguf_structure"]

SUPPORTED_VERSIONS = frozenset({2, 3})
_MAGIC = b"GGUF"
# GGUF value types (gguf.GGUFValueType) -> fixed size in bytes; STRING (8) and ARRAY (9) vary.
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
# ggml's GGML_MAX_DIMS is 4; leave room without letting a header claim billions of dims.
_MAX_TENSOR_DIMS = 8
# Arrays nest only in exotic files; this bounds the recursion a crafted file could cause.
_MAX_ARRAY_DEPTH = 4


class _Cursor:
    def __init__(self, data: mmap.mmap | bytes) -> None:
        self._data = data
        self.position = 0

    def starts_with(self, prefix: bytes) -> bool:
        return bytes(self._data[: len(prefix)]) == prefix

    def remaining(self) -> int:
        return len(self._data) - self.position

    def take(self, count: int, what: str) -> int:
        if count < 0 or count > self.remaining():
            raise InvalidModelFile(f"truncated or corrupt GGUF header ({what})")
        start = self.position
        self.position += count
        return start

    def u32(self, what: str) -> int:
        value: int = struct.unpack_from("<I", self._data, self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack_from("<Q", self._data, self.take(8, what))[0]
        return value

    def string(self, what: str) -> None:
        self.take(self.u64(what), what)


def _skip_value(cursor: _Cursor, value_type: int, depth: int) -> None:
    if value_type in _FIXED_SIZES:
        cursor.take(_FIXED_SIZES[value_type], "value")
    elif value_type == _STRING:
        cursor.string("string value")
    elif value_type == _ARRAY:
        if depth >= _MAX_ARRAY_DEPTH:
            raise InvalidModelFile("GGUF arrays are nested too deeply")
        item_type = cursor.u32("array type")
        count = cursor.u64("array length")
        if item_type in _FIXED_SIZES:
            cursor.take(count * _FIXED_SIZES[item_type], "array data")
            return
        # Every variable-size item takes at least 8 bytes (its length or its header).
        if count * 8 > cursor.remaining():
            raise InvalidModelFile("GGUF array length exceeds the file size")
        for _ in range(count):
            _skip_value(cursor, item_type, depth + 1)
    else:
        raise InvalidModelFile(f"unknown GGUF value type {value_type}")


def _check(cursor: _Cursor) -> None:
    if not cursor.starts_with(_MAGIC):
        raise InvalidModelFile("not a GGUF file (no GGUF magic number)")
    cursor.take(4, "magic")
    version = cursor.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFile(f"unsupported GGUF version {version}")
    tensor_count = cursor.u64("tensor count")
    kv_count = cursor.u64("key/value count")
    # A key/value takes at least 13 bytes and a tensor entry at least 24.
    if kv_count * 13 + tensor_count * 24 > cursor.remaining():
        raise InvalidModelFile("GGUF header counts exceed the file size")
    for _ in range(kv_count):
        cursor.string("key")
        _skip_value(cursor, cursor.u32("value type"), 0)
    for _ in range(tensor_count):
        cursor.string("tensor name")
        dims = cursor.u32("tensor dimensions")
        if dims > _MAX_TENSOR_DIMS:
            raise InvalidModelFile(f"GGUF tensor has {dims} dimensions")
        cursor.take(8 * dims + 4 + 8, "tensor info")


def check_gguf_structure(path: Path) -> None:
    """Raise InvalidModelFile unless the header's counts and lengths all fit in the file."""
    try:
        with path.open("rb") as handle:
            if path.stat().st_size == 0:
                raise InvalidModelFile("not a GGUF file (it is empty)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _check(_Cursor(data))
    except OSError as exc:
        raise InvalidModelFile(f"cannot read GGUF file: {exc.strerror or exc}") from exc
