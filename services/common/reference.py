"""Model references, normalized the way DMR does.

`smollm2` -> `index.docker.io/ai/smollm2:latest`, displayed as `ai/smollm2:latest`: default registry
`index.docker.io`, default namespace `ai/` for single-component names, default tag `latest`.
Validation follows the distribution reference grammar (lower-case repository, tag charset, length)
and happens before a reference touches anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "InvalidReference",
    "ModelReference",
    "is_model_id",
    "parse_reference",
]

DEFAULT_REGISTRY = "index.docker.io"
DEFAULT_NAMESPACE = "ai"
DEFAULT_TAG = "latest"

_DEFAULT_REGISTRY_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_REGISTRY_ALIASES = {"hf.co": "huggingface.co"}
# All matched with fullmatch and re.ASCII: `$` also matches before a trailing newline, and
# without ASCII `\w`/`\d` accept any Unicode letter or digit; both once let a newline or a
# non-ASCII character into a repository, tag or host (found by tests/unit/common/
# test_reference_properties.py).
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_REGISTRY = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::\d{1,5})?", re.ASCII
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}", re.ASCII)
_HEX_ID = re.compile(r"(?:[a-f0-9]{12}|[a-f0-9]{64})", re.ASCII)
_MAX_NAME_LENGTH = 255


class InvalidReference(ValueError):
    """The text is not a model reference."""


@dataclass(frozen=True)
class ModelReference:
    registry: str
    repository: str
    tag: str
    digest: str = ""

    @property
    def is_default_registry(self) -> bool:
        return self.registry == DEFAULT_REGISTRY

    @property
    def familiar(self) -> str:
        """What users see and what the store tags with: `ai/smollm2:latest`."""
        return self.local_name(DEFAULT_REGISTRY)

    def local_name(self, default_registry: str) -> str:
        """The name without the host when it is `default_registry` (DMR's DEFAULT_REGISTRY), so
        that it reads back to this reference under that default. Docker Hub's models keep a
        `docker.io/` host when another registry is the default: `docker.io/ai/x` and
        `<default>/ai/x` are different models and must not share the name `ai/x`."""
        if self.registry != default_registry:
            host = "docker.io" if self.is_default_registry else self.registry
        # `docker.io/a.b/c` must not display as `a.b/c`, which would read back as host `a.b`.
        elif _looks_like_registry(self.repository.partition("/")[0]):
            host = self.registry
        else:
            host = ""
        name = f"{host}/{self.repository}" if host else self.repository
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag}"

    @property
    def qualified(self) -> str:
        """With the registry always present: `index.docker.io/ai/smollm2:latest`."""
        name = f"{self.registry}/{self.repository}"
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag}"

    def __str__(self) -> str:
        return self.familiar


def is_model_id(text: str) -> bool:
    """A full `sha256:<hex>` id, or a 12- or 64-hex id prefix as `docker model ls` prints them."""
    value = text.strip()
    return bool(_DIGEST.fullmatch(value) or _HEX_ID.fullmatch(value))


def _looks_like_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def parse_reference(
    text: str,
    *,
    default_registry: str = DEFAULT_REGISTRY,
    default_namespace: str = DEFAULT_NAMESPACE,
) -> ModelReference:
    """Parse and normalize; raises InvalidReference with a message fit for an end user."""
    raw = text.strip()
    if not raw:
        raise InvalidReference("model reference is empty")
    if len(raw) > _MAX_NAME_LENGTH + 140:
        raise InvalidReference(f"model reference is too long ({len(raw)} characters)")
    if raw.startswith("hf.co/"):
        raw = "huggingface.co/" + raw.removeprefix("hf.co/")

    name, _, digest = raw.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise InvalidReference(f"invalid digest in reference {text!r}: expected sha256:<64 hex>")

    tag = ""
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r} in reference {text!r}")

    components = name.split("/")
    registry = default_registry
    if len(components) > 1 and _looks_like_registry(components[0]):
        registry = components[0].lower()
        if not _REGISTRY.fullmatch(registry):
            raise InvalidReference(f"invalid registry host {components[0]!r} in {text!r}")
        registry = _REGISTRY_ALIASES.get(registry, registry)
        components = components[1:]
    if registry in _DEFAULT_REGISTRY_ALIASES:
        registry = DEFAULT_REGISTRY
    if len(components) == 1 and registry == DEFAULT_REGISTRY:
        components = [default_namespace, *components]

    for component in components:
        if not _PATH_COMPONENT.fullmatch(component):
            hint = (
                " (repository names must be lower-case)" if component.lower() != component else ""
            )
            raise InvalidReference(
                f"invalid repository name component {component!r} in {text!r}{hint}"
            )
    repository = "/".join(components)
    if len(repository) + len(registry) + 1 > _MAX_NAME_LENGTH:
        raise InvalidReference(f"repository name in {text!r} is longer than {_MAX_NAME_LENGTH}")
    return ModelReference(
        registry=registry,
        repository=repository,
        tag=tag or ("" if digest else DEFAULT_TAG),
        digest=digest,
    )
