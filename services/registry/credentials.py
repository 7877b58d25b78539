"""Credentials for upstream registries: from the request, else Docker's `~/.docker/config.json`.

Only `auths` entries with an inline `auth` (base64 `user:password`) or `username`/`password` are
read; credential helpers (`credsStore`, `credHelpers`) would run external programs and are not
supported. Docker Hub's entry is keyed `https://index.docker.io/v1/`, so every alias of the default
registry finds it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from services.common.reference import DEFAULT_REGISTRY

__all__ = ["Credentials", "docker_config_credentials"]

_log = logging.getLogger(__name__)
_DOCKER_HUB_KEYS = (
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
)
# A docker config is a few KiB; refuse to parse anything absurd.
_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Credentials:
    # Sent as `Authorization: Bearer <token>` unchanged (DMR's `bearer-token`).
    bearer_token: str = ""
    username: str = ""
    password: str = ""

    @property
    def has_basic(self) -> bool:
        return bool(self.username)

    @property
    def empty(self) -> bool:
        return not (self.bearer_token or self.username)


def _keys_for(registry: str) -> tuple[str, ...]:
    if registry == DEFAULT_REGISTRY:
        return _DOCKER_HUB_KEYS
    return (registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/")


def _entry_credentials(entry: object) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Credentials(username=user, password=password) if sep and user else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name and isinstance(secret, str):
        return Credentials(username=name, password=secret)
    token = entry.get("registrytoken")
    if isinstance(token, str) and token:
        return Credentials(bearer_token=token)
    return None


def docker_config_credentials(path: Path, registry: str) -> Credentials | None:
    """The `auths` entry for `registry` in the Docker config at `path` (blocking: to_thread)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    if len(data) > _MAX_CONFIG_BYTES:
        _log.warning("ignoring %s: larger than %d bytes", path, _MAX_CONFIG_BYTES)
        return None
    try:
        raw = json.loads(data)
    except ValueError:
        _log.warning("ignoring %s: not valid JSON", path)
        return None
    auths = raw.get("auths") if isinstance(raw, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in _keys_for(registry):
        found = _entry_credentials(auths.get(key))
        if found is not None:
            return found
    return None
