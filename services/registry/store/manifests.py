"""OCI manifests and DMR model configs: parse and validate what is read, build what is written.

Built JSON follows Go's encoding/json, because DMR writes its artifacts with it: struct fields in
DMR's declaration order, map keys sorted, compact separators, and `<`, `>`, `&`, U+2028 and U+2029
escaped. Parsing accepts DMR configs (v0.1 and v0.2) and CNCF ModelPack v1 configs, normalized to
DMR's shape as DMR's own adapter does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.digest import InvalidDigest, parse_digest
from services.registry.errors import StoreCorrupt
from services.registry.store.json_document import load_json

__all__ = [
    "ANNOTATION_FILEPATH",
    "ANNOTATION_FILE_METADATA",
    "ANNOTATION_MEDIATYPE_UNTESTED",
    "CONFIG_MEDIA_TYPES",
    "MEDIA_TYPE_CHAT_TEMPLATE",
    "MEDIA_TYPE_CNCF_CONFIG",
    "MEDIA_TYPE_CONFIG_V01",
    "MEDIA_TYPE_CONFIG_V02",
    "MEDIA_TYPE_GGUF",
    "MEDIA_TYPE_LICENSE",
    "MEDIA_TYPE_MANIFEST",
    "MEDIA_TYPE_MMPROJ",
    "ConfigFile",
    "Descriptor",
    "Manifest",
    "ModelConfig",
    "build_config",
    "build_manifest",
    "format_go_time",
    "format_go_time_ns",
    "go_json",
    "parse_config",
    "parse_manifest",
]

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG_V01 = "application/vnd.docker.ai.model.config.v0.1+json"
MEDIA_TYPE_CONFIG_V02 = "application/vnd.docker.ai.model.config.v0.2+json"
MEDIA_TYPE_CNCF_CONFIG = "application/vnd.cncf.model.config.v1+json"
CONFIG_MEDIA_TYPES = frozenset(
    {MEDIA_TYPE_CONFIG_V01, MEDIA_TYPE_CONFIG_V02, MEDIA_TYPE_CNCF_CONFIG}
)
MEDIA_TYPE_GGUF = "application/vnd.docker.ai.gguf.v3"
MEDIA_TYPE_LICENSE = "application/vnd.docker.ai.license"
# DMR's code uses this, not model-spec's "gguf.v3.mmproj".
MEDIA_TYPE_MMPROJ = "application/vnd.docker.ai.mmproj"
MEDIA_TYPE_CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"

ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANNOTATION_MEDIATYPE_UNTESTED = "org.cncf.model.file.mediatype.untested"

_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_INT32_MAX = 2**31 - 1


def go_json(value: Any) -> bytes:
    """Serialize like Go's json.Marshal (callers order struct fields; map keys get sorted)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # These characters can only occur inside strings in the output, so replacing is safe.
    for char, escaped in _GO_ESCAPES.items():
        text = text.replace(char, escaped)
    return text.encode()


def format_go_time(moment: datetime) -> str:
    """RFC 3339 in UTC with the fraction trimmed of trailing zeros, as Go's time.Time marshals."""
    utc = moment.astimezone(UTC)
    return format_go_time_ns(int(utc.timestamp()) * 1_000_000_000 + utc.microsecond * 1000)


def format_go_time_ns(unix_ns: int) -> str:
    """The same for a Unix time in nanoseconds (file mtimes carry nanoseconds)."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        # Go writes up to nine fractional digits; Python parses at most six.
        head, dot, rest = text.partition(".")
        if dot:
            digits = "".join(ch for ch in rest if ch.isdigit())
            rest = digits[:6] + rest[len(digits) :]
            text = f"{head}.{rest}"
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "mediaType": self.media_type,
            "size": self.size,
            "digest": self.digest,
        }
        if self.annotations:
            body["annotations"] = dict(sorted(self.annotations.items()))
        return body

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Descriptor:
        if not isinstance(raw, dict):
            raise StoreCorrupt(f"{where}: descriptor is not an object")
        media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise StoreCorrupt(f"{where}: descriptor has no mediaType")
        if not isinstance(digest, str):
            raise StoreCorrupt(f"{where}: descriptor has no digest")
        try:
            parse_digest(digest)
        except InvalidDigest as exc:
            raise StoreCorrupt(f"{where}: {exc}") from exc
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreCorrupt(f"{where}: descriptor {digest} has an invalid size")
        annotations = raw.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise StoreCorrupt(f"{where}: descriptor {digest} has invalid annotations")
        return cls(media_type, digest, size, dict(annotations))


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)

    def blob_digests(self) -> tuple[str, ...]:
        """Config and layer digests (the blobs this manifest keeps alive)."""
        return (self.config.digest, *(layer.digest for layer in self.layers))


def parse_manifest(data: bytes) -> Manifest:
    raw = load_json(data, "manifest")
    if not isinstance(raw, dict):
        raise StoreCorrupt("manifest is not a JSON object")
    if raw.get("schemaVersion") != 2:
        raise StoreCorrupt("manifest schemaVersion must be 2")
    media_type = raw.get("mediaType", MEDIA_TYPE_MANIFEST)
    if media_type != MEDIA_TYPE_MANIFEST:
        raise StoreCorrupt(f"unsupported manifest media type {media_type!r}")
    layers = raw.get("layers")
    if not isinstance(layers, list):
        raise StoreCorrupt("manifest has no layers list")
    annotations = raw.get("annotations") or {}
    artifact_type = raw.get("artifactType") or ""
    if not isinstance(annotations, dict) or not isinstance(artifact_type, str):
        raise StoreCorrupt("manifest has invalid annotations or artifactType")
    return Manifest(
        config=Descriptor.from_json(raw.get("config"), "manifest config"),
        layers=tuple(Descriptor.from_json(item, "manifest layer") for item in layers),
        artifact_type=artifact_type,
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def build_manifest(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    """DMR's manifest: OCI image manifest, no artifactType, no manifest annotations."""
    return go_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
    )


@dataclass(frozen=True)
class ModelConfig:
    """DMR's `config` object (types.Config); empty strings and 0 mean "not set"."""

    format: str = ""
    quantization: str = ""
    parameters: str = ""
    architecture: str = ""
    size: str = ""
    gguf: Mapping[str, str] = field(default_factory=dict)
    context_size: int = 0


@dataclass(frozen=True)
class ConfigFile:
    """DMR's config blob (types.ConfigFile)."""

    config: ModelConfig
    created: datetime | None
    diff_ids: tuple[str, ...]


def build_config(config_file: ConfigFile) -> bytes:
    model = config_file.config
    body: dict[str, Any] = {}
    for key, value in (
        ("format", model.format),
        ("quantization", model.quantization),
        ("parameters", model.parameters),
        ("architecture", model.architecture),
        ("size", model.size),
    ):
        if value:
            body[key] = value
    if model.gguf:
        body["gguf"] = dict(sorted(model.gguf.items()))
    if model.context_size:
        body["context_size"] = model.context_size
    descriptor: dict[str, Any] = {}
    if config_file.created is not None:
        descriptor["created"] = format_go_time(config_file.created)
    return go_json(
        {
            "config": body,
            "descriptor": descriptor,
            "rootfs": {"type": "rootfs", "diff_ids": list(config_file.diff_ids)},
        }
    )


def _object(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _string_map(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def _context_size(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 < raw <= _INT32_MAX:
        return raw
    return 0


def parse_config(media_type: str, data: bytes) -> ConfigFile:
    """A config blob of any accepted media type, in DMR's shape."""
    if media_type not in CONFIG_MEDIA_TYPES:
        raise StoreCorrupt(f"config type {media_type!r} is not supported")
    raw = load_json(data, "model config")
    if not isinstance(raw, dict):
        raise StoreCorrupt("model config is not a JSON object")
    config, descriptor = _object(raw, "config"), _object(raw, "descriptor")
    if media_type == MEDIA_TYPE_CNCF_CONFIG:
        diff_ids = _object(raw, "modelfs").get("diffIds") or []
        model = ModelConfig(
            format=str(config.get("format") or ""),
            quantization=str(config.get("quantization") or ""),
            parameters=str(config.get("paramSize") or ""),
            architecture=str(config.get("architecture") or descriptor.get("family") or ""),
        )
        created = _parse_time(descriptor.get("createdAt"))
    else:
        diff_ids = _object(raw, "rootfs").get("diff_ids") or []
        model = ModelConfig(
            format=str(config.get("format") or ""),
            quantization=str(config.get("quantization") or ""),
            parameters=str(config.get("parameters") or ""),
            architecture=str(config.get("architecture") or ""),
            size=str(config.get("size") or ""),
            gguf=_string_map(config.get("gguf")),
            context_size=_context_size(config.get("context_size")),
        )
        created = _parse_time(descriptor.get("created"))
    if not isinstance(diff_ids, list):
        diff_ids = []
    return ConfigFile(model, created, tuple(str(d) for d in diff_ids))
