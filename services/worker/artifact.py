"""What the worker needs to know about a model artifact: which layers llama-server runs.

DMR's layer media types (gguf.v3, chat.template.jinja, license) and, for ModelPack artifacts, the
`org.cncf.model.filepath` annotation of their generic weight layers. Licenses are not needed to
serve and are never fetched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.digest import InvalidDigest, parse_digest
from services.worker.errors import InvalidModelError

__all__ = [
    "CHAT_TEMPLATE_MEDIA_TYPE",
    "GGUF_MEDIA_TYPE",
    "LICENSE_MEDIA_TYPE",
    "Layer",
    "ModelSpec",
    "RuntimeLayers",
    "runtime_layers",
]

GGUF_MEDIA_TYPE = "application/vnd.docker.ai.gguf.v3"
CHAT_TEMPLATE_MEDIA_TYPE = "application/vnd.docker.ai.chat.template.jinja"
LICENSE_MEDIA_TYPE = "application/vnd.docker.ai.license"
_CNCF_GGUF_MEDIA_TYPE = "application/vnd.cncf.model.weight.v1.gguf"
_CNCF_RAW_MEDIA_TYPES = frozenset(
    {"application/vnd.cncf.model.weight.v1.raw", "application/vnd.cncf.model.weight.config.v1.raw"}
)
_FILEPATH_ANNOTATION = "org.cncf.model.filepath"


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def filepath(self) -> str:
        return self.annotations.get(_FILEPATH_ANNOTATION, "")


@dataclass(frozen=True)
class ModelSpec:
    """A model as the worker loads it: identified by its manifest digest."""

    model_id: str
    layers: tuple[Layer, ...]
    # 0 when the artifact does not say.
    context_size: int = 0


@dataclass(frozen=True)
class RuntimeLayers:
    """The layers llama-server reads: GGUF shards in order, and an optional chat template."""

    gguf: tuple[Layer, ...]
    chat_template: Layer | None

    @property
    def all(self) -> tuple[Layer, ...]:
        return self.gguf + ((self.chat_template,) if self.chat_template else ())

    @property
    def weights_bytes(self) -> int:
        return sum(layer.size for layer in self.gguf)


def _is_gguf(layer: Layer) -> bool:
    if layer.media_type in (GGUF_MEDIA_TYPE, _CNCF_GGUF_MEDIA_TYPE):
        return True
    return layer.media_type in _CNCF_RAW_MEDIA_TYPES and layer.filepath.endswith(".gguf")


def _is_chat_template(layer: Layer) -> bool:
    if layer.media_type == CHAT_TEMPLATE_MEDIA_TYPE:
        return True
    return layer.media_type in _CNCF_RAW_MEDIA_TYPES and layer.filepath.endswith(".jinja")


def runtime_layers(spec: ModelSpec) -> RuntimeLayers:
    """Pick the layers to fetch; InvalidModelError when there is nothing llama-server can run."""
    for layer in spec.layers:
        try:
            parse_digest(layer.digest)
        except InvalidDigest as exc:
            raise InvalidModelError(f"model {spec.model_id}: {exc}") from exc
        if layer.size < 0:
            raise InvalidModelError(f"model {spec.model_id}: layer {layer.digest} has size < 0")
    gguf = tuple(layer for layer in spec.layers if _is_gguf(layer))
    if not gguf:
        kinds = ", ".join(sorted({layer.media_type for layer in spec.layers})) or "none"
        raise InvalidModelError(
            f"model {spec.model_id} has no GGUF layer ({GGUF_MEDIA_TYPE}); its layers: {kinds}"
        )
    templates = [layer for layer in spec.layers if _is_chat_template(layer)]
    return RuntimeLayers(gguf=gguf, chat_template=templates[-1] if templates else None)
