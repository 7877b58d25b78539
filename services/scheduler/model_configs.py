"""Per-model runtime configuration (DMR's `/engines/_configure`) and where it is kept.

DMR keeps these in memory and loses them on restart; here `ConfigStore` writes them to one JSON
file (`SCHEDULER_STATE_PATH`) before `put` returns: temp file, fsync, rename, fsync of the
directory, so a crash leaves the old or the new document, never half of one. A file that cannot
be read is moved aside (`<name>.corrupt-<unix time>`) and the scheduler starts without
configurations rather than not at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modelrunner.v1 import common_pb2
from services.common.clock import Clock, SystemClock
from services.common.files import write_atomically
from services.scheduler.errors import InvalidRequest, Unavailable
from services.scheduler.runtime_flags import validate_llama_args

__all__ = [
    "MAX_CONTEXT_SIZE",
    "MAX_PARALLEL",
    "MAX_REPLICAS",
    "MAX_REQUIRED_TAGS",
    "MAX_TAG_CHARS",
    "NEVER_UNLOAD",
    "ConfigEntry",
    "ConfigStore",
    "ModelRuntimeConfig",
    "config_from_proto",
    "config_to_proto",
    "effective_keep_alive",
]

_log = logging.getLogger(__name__)

NEVER_UNLOAD: float = -1.0
MAX_CONTEXT_SIZE = 1 << 20
MAX_PARALLEL = 256
MAX_REPLICAS = 1024
MAX_REQUIRED_TAGS = 32
MAX_TAG_CHARS = 256
_FILE_VERSION = 1


@dataclass(frozen=True)
class ModelRuntimeConfig:
    # Tokens per slot; 0: the packaged context size, else the scheduler's default.
    context_size: int = 0
    # Seconds; None: the scheduler default; 0: unload right after use; negative: never.
    keep_alive: float | None = None
    llama_args: tuple[str, ...] = ()
    required_tags: Mapping[str, str] = field(default_factory=dict)
    min_replicas: int = 0
    # 0: the scheduler default.
    max_replicas: int = 0
    # llama-server slots per replica; 0: the scheduler default.
    parallel: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "llama_args", tuple(self.llama_args))
        object.__setattr__(self, "required_tags", MappingProxyType(dict(self.required_tags)))

    def validate(self) -> None:
        """InvalidRequest with a message for the user when a value is out of range."""
        _check_range("context-size", self.context_size, MAX_CONTEXT_SIZE)
        _check_range("parallel", self.parallel, MAX_PARALLEL)
        _check_range("min-replicas", self.min_replicas, MAX_REPLICAS)
        _check_range("max-replicas", self.max_replicas, MAX_REPLICAS)
        if 0 < self.max_replicas < self.min_replicas:
            raise InvalidRequest(
                f"min-replicas ({self.min_replicas}) is above max-replicas ({self.max_replicas})"
            )
        if self.keep_alive is not None and not math.isfinite(self.keep_alive):
            raise InvalidRequest(f"keep-alive must be a number of seconds, got {self.keep_alive}")
        validate_llama_args(self.llama_args)
        if len(self.required_tags) > MAX_REQUIRED_TAGS:
            raise InvalidRequest(f"at most {MAX_REQUIRED_TAGS} required tags")
        for key, value in self.required_tags.items():
            for what, text in (("name", key), ("value", value)):
                if not text or len(text) > MAX_TAG_CHARS or not text.isprintable():
                    raise InvalidRequest(
                        f"required tag {what} {text!r} must be 1 to {MAX_TAG_CHARS} printable "
                        "characters"
                    )


def _check_range(name: str, value: int, maximum: int) -> None:
    if value < 0:
        raise InvalidRequest(f"{name} must be >= 0, got {value}")
    if value > maximum:
        raise InvalidRequest(f"{name} must be at most {maximum}, got {value}")


def effective_keep_alive(config: ModelRuntimeConfig | None, default: float | None) -> float | None:
    """Seconds an idle runner stays loaded; None means never unload."""
    if config is None or config.keep_alive is None:
        return default
    if config.keep_alive < 0:
        return None
    return config.keep_alive


def config_from_proto(message: common_pb2.ModelRuntimeConfig) -> ModelRuntimeConfig:
    """Conversion only; call `validate()` on the result."""
    return ModelRuntimeConfig(
        context_size=message.context_size,
        keep_alive=(message.keep_alive_seconds if message.HasField("keep_alive_seconds") else None),
        llama_args=tuple(message.llama_args),
        required_tags=dict(message.required_tags),
        min_replicas=message.min_replicas,
        max_replicas=message.max_replicas,
        parallel=message.parallel,
    )


def config_to_proto(config: ModelRuntimeConfig) -> common_pb2.ModelRuntimeConfig:
    message = common_pb2.ModelRuntimeConfig(
        context_size=config.context_size,
        llama_args=list(config.llama_args),
        required_tags=dict(config.required_tags),
        min_replicas=config.min_replicas,
        max_replicas=config.max_replicas,
        parallel=config.parallel,
    )
    if config.keep_alive is not None:
        message.keep_alive_seconds = config.keep_alive
    return message


@dataclass(frozen=True)
class ConfigEntry:
    model_id: str
    # The reference it was configured under, for display.
    reference: str
    config: ModelRuntimeConfig


def _config_to_json(config: ModelRuntimeConfig) -> dict[str, Any]:
    return {
        "context_size": config.context_size,
        "keep_alive": config.keep_alive,
        "llama_args": list(config.llama_args),
        "required_tags": dict(config.required_tags),
        "min_replicas": config.min_replicas,
        "max_replicas": config.max_replicas,
        "parallel": config.parallel,
    }


def _int(raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} is not an integer")
    return value


def _config_from_json(raw: Any) -> ModelRuntimeConfig:
    if not isinstance(raw, dict):
        raise ValueError("config is not an object")
    keep_alive = raw.get("keep_alive")
    if keep_alive is not None and (
        not isinstance(keep_alive, int | float) or isinstance(keep_alive, bool)
    ):
        raise ValueError("keep_alive is not a number")
    args = raw.get("llama_args", [])
    tags = raw.get("required_tags", {})
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("llama_args is not a list of strings")
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise ValueError("required_tags is not an object of strings")
    return ModelRuntimeConfig(
        context_size=_int(raw, "context_size"),
        keep_alive=None if keep_alive is None else float(keep_alive),
        llama_args=tuple(args),
        required_tags=tags,
        min_replicas=_int(raw, "min_replicas"),
        max_replicas=_int(raw, "max_replicas"),
        parallel=_int(raw, "parallel"),
    )


def _entry_from_json(raw: Any) -> ConfigEntry:
    if not isinstance(raw, dict):
        raise ValueError("entry is not an object")
    model_id, reference = raw.get("model_id"), raw.get("reference", "")
    if not isinstance(model_id, str) or not model_id or not isinstance(reference, str):
        raise ValueError("entry has no model_id")
    return ConfigEntry(model_id, reference, _config_from_json(raw.get("config")))


def _parse_document(data: bytes) -> list[Any]:
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != _FILE_VERSION:
        raise ValueError(f"not a version {_FILE_VERSION} model configuration document")
    models = document.get("models")
    if not isinstance(models, list):
        raise ValueError("models is not a list")
    return models


class ConfigStore:
    """The model configurations, in memory and (with a path) in one JSON file.

    Reads are synchronous and never touch the disk. `put` is serialised by a lock; the file
    writer also numbers its documents, so a write outliving a cancelled `put` never replaces a
    newer document.
    """

    def __init__(self, path: Path | None, *, clock: Clock | None = None) -> None:
        self._path = path
        self._clock = clock or SystemClock()
        self._entries: dict[str, ConfigEntry] = {}
        self._lock = asyncio.Lock()
        self._sequence = 0
        self._written = 0
        self._write_lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        return self._path

    async def load(self) -> None:
        """Read the file if present. Never raises: a corrupt file is moved aside, and an
        entry that no longer validates (an allowlist that changed) is dropped with an error."""
        if self._path is None:
            return
        async with self._lock:
            self._entries = await asyncio.to_thread(self._load_sync, self._path)

    def _load_sync(self, path: Path) -> dict[str, ConfigEntry]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            _log.error("cannot read model configurations %s: %s", path, exc)
            self._move_aside(path)
            return {}
        try:
            models = _parse_document(data)
        except (ValueError, UnicodeDecodeError) as exc:
            _log.error("model configurations %s are corrupt: %s", path, exc)
            self._move_aside(path)
            return {}
        entries: dict[str, ConfigEntry] = {}
        for raw in models:
            try:
                entry = _entry_from_json(raw)
                entry.config.validate()
            except (ValueError, InvalidRequest) as exc:
                _log.error("dropping a stored model configuration from %s: %s", path, exc)
                continue
            entries[entry.model_id] = entry
        _log.info("loaded %d model configurations from %s", len(entries), path)
        return entries

    def _move_aside(self, path: Path) -> None:
        target = path.with_name(f"{path.name}.corrupt-{int(self._clock.wall())}")
        try:
            os.replace(path, target)
        except OSError as exc:
            _log.error("cannot move %s aside: %s", path, exc)
            return
        _log.error("moved unreadable model configurations to %s; starting without them", target)

    def get(self, model_id: str) -> ConfigEntry | None:
        return self._entries.get(model_id)

    def entries(self) -> list[ConfigEntry]:
        """Sorted by reference (then model id, for models configured without one)."""
        return sorted(self._entries.values(), key=lambda e: (e.reference, e.model_id))

    async def put(self, entry: ConfigEntry) -> None:
        """Store (replace) the model's configuration; on disk before this returns.

        Raises InvalidRequest for an invalid configuration, and Unavailable when the file cannot
        be written; the stored state is then unchanged.
        """
        entry.config.validate()
        async with self._lock:
            updated = {**self._entries, entry.model_id: entry}
            if self._path is not None:
                self._sequence += 1
                data = _encode(updated.values())
                try:
                    await asyncio.to_thread(self._write_sync, self._path, self._sequence, data)
                except OSError as exc:
                    raise Unavailable(f"cannot save the model configuration: {exc}") from exc
            self._entries = updated

    def _write_sync(self, path: Path, sequence: int, data: bytes) -> None:
        with self._write_lock:
            if sequence <= self._written:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, data)
            self._written = sequence


def _encode(entries: Iterable[ConfigEntry]) -> bytes:
    models = [
        {"model_id": e.model_id, "reference": e.reference, "config": _config_to_json(e.config)}
        for e in sorted(entries, key=lambda e: e.model_id)
    ]
    document = {"version": _FILE_VERSION, "models": models}
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
