"""What DMR's config needs from a GGUF file, read with llama.cpp's `gguf` package.

Values follow DMR (which uses gguf-parser-go): quantization is the file type's name ("Q4_1"),
parameters the total tensor element count ("134.52M"), size the total tensor bytes in IEC units
("92.10MiB"), and every header key/value rendered as a string, with arrays of more than 50 elements
left out and shorter ones joined with ", ". The functions here block; call them via to_thread.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from services.registry.errors import InvalidModelFile
from services.registry.gguf_check import check_gguf_structure

__all__ = [
    "GGUF_MAGIC",
    "GGUFInfo",
    "format_parameters",
    "format_size",
    "has_gguf_magic",
    "read_gguf_info",
]

_log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# DMR's limit: token lists and merges (tens of thousands of entries) stay out of the config.
_MAX_ARRAY_ELEMENTS = 50
# Fields the gguf reader synthesizes from the file header; they are not key/values.
_HEADER_FIELDS = frozenset({"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"})
_FLOAT_TYPES = frozenset({gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64})


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    quantization: str
    parameter_count: int
    tensor_bytes: int
    # `<architecture>.context_length`; 0 when the file does not say.
    context_length: int
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def parameters(self) -> str:
        return format_parameters(self.parameter_count)

    @property
    def size(self) -> str:
        return format_size(self.tensor_bytes)


def has_gguf_magic(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def format_parameters(count: int) -> str:
    """gguf-parser-go's parameter scalar without the space: 134515008 -> "134.52M"."""
    for divisor, unit in ((1e15, "Q"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= divisor:
            return f"{count / divisor:.2f}{unit}"
    return str(count)


def format_size(size: int) -> str:
    """IEC bytes with two decimals, no space: 96576768 -> "92.10MiB"."""
    if size < 1024:
        return f"{size}B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.2f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _scalar(value: Any, value_type: gguf.GGUFValueType) -> str:
    if value_type == gguf.GGUFValueType.BOOL:
        return "true" if value else "false"
    if value_type in _FLOAT_TYPES:
        # Go's %f, which DMR uses for floats.
        return f"{float(value):f}"
    return str(value)


def _render(reader_field: Any) -> str | None:
    types = reader_field.types
    if not types:
        return None
    if types[0] != gguf.GGUFValueType.ARRAY:
        return _scalar(reader_field.contents(), types[0])
    if len(reader_field.data) > _MAX_ARRAY_ELEMENTS:
        return None
    if len(types) > 2 and types[1] == gguf.GGUFValueType.ARRAY:
        return None  # nested arrays: the reader cannot render them, and DMR has no use for them
    return ", ".join(_scalar(item, types[-1]) for item in reader_field.contents())


def _quantization(reader: Any, file_type: int | None) -> str:
    if file_type is not None:
        try:
            name = str(gguf.LlamaFileType(file_type).name)
        except ValueError:
            name = ""
        if name and name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No usable general.file_type: name the type holding most weights, as gguf-parser-go guesses.
    weights: Counter[str] = Counter()
    for tensor in reader.tensors:
        if len(tensor.shape) >= 2:
            weights[tensor.tensor_type.name] += int(tensor.n_elements)
    return weights.most_common(1)[0][0] if weights else ""


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse the header and tensor table; raises InvalidModelFile when it is not a valid GGUF."""
    check_gguf_structure(path)
    try:
        return _read(path)
    except InvalidModelFile:
        raise
    except Exception as exc:
        # The file is untrusted input and the reader fails on bad data in many ways.
        raise InvalidModelFile(f"{path.name} is not a valid GGUF file: {exc}") from exc


def _read(path: Path) -> GGUFInfo:
    reader = gguf.GGUFReader(path)
    metadata: dict[str, str] = {}
    for name, reader_field in reader.fields.items():
        if name in _HEADER_FIELDS:
            continue
        try:
            rendered = _render(reader_field)
        except (ValueError, UnicodeDecodeError, IndexError) as exc:
            _log.warning("skipping GGUF key %s of %s: %s", name, path.name, exc)
            continue
        if rendered is not None:
            metadata[name] = rendered

    def scalar(key: str) -> Any:
        found = reader.fields.get(key)
        if found is None or not found.types or found.types[0] == gguf.GGUFValueType.ARRAY:
            return None
        return found.contents()

    architecture = str(scalar("general.architecture") or "")
    file_type = scalar("general.file_type")
    context_length = scalar(f"{architecture}.context_length") if architecture else None
    return GGUFInfo(
        architecture=architecture,
        quantization=_quantization(reader, int(file_type) if file_type is not None else None),
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
        tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        context_length=int(context_length) if isinstance(context_length, int) else 0,
        metadata=metadata,
    )
