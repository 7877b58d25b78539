"""Registry settings, read once from the environment in __main__ and passed down."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.env import (
    SettingError,
    env_duration,
    env_int,
    env_path,
    env_str,
)

__all__ = ["RegistrySettings"]

_MIB = 1024 * 1024
_DAY = 24 * 3600.0
_DEFAULT_MODELS_PATH = Path("~/.model-runner/models")


@dataclass(frozen=True)
class RegistrySettings:
    # Root of the OCI image layout (oci-layout, index.json, blobs/).
    # `~` is expanded by from_env.
    models_path: Path = _DEFAULT_MODELS_PATH
    listen_address: str = "127.0.0.1:50051"
    # Seconds in-flight RPCs (a FetchBlob stream, say) get after SIGTERM.
    shutdown_grace: float = 5.0
    # Size of each FetchBlob message: large enough to keep the stream busy, far below the
    # 64 MiB gRPC message limit.
    fetch_chunk_bytes: int = _MIB
    # Buffer for copying and hashing files into the store.
    io_chunk_bytes: int = 4 * _MIB
    # Manifests and config blobs are read whole; this bounds what one may make us buffer.
    max_metadata_bytes: int = 16 * _MIB
    # License and chat-template files are text read whole for validation.
    max_text_file_bytes: int = 16 * _MIB
    # Partial blobs (`<hex>.incomplete`) older than this are removed at start-up (DMR: 7 days).
    incomplete_max_age: float = 7 * _DAY
    # Directories Package may read from; empty means any path the registry can read.
    package_allowed_dirs: tuple[Path, ...] = ()
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RegistrySettings:
        defaults = cls()
        settings = cls(
            models_path=env_path(env, "MODELS_PATH", defaults.models_path),
            listen_address=env_str(env, "REGISTRY_LISTEN_ADDRESS", defaults.listen_address),
            shutdown_grace=env_duration(env, "REGISTRY_SHUTDOWN_GRACE", defaults.shutdown_grace),
            fetch_chunk_bytes=env_int(
                env, "REGISTRY_FETCH_CHUNK_BYTES", defaults.fetch_chunk_bytes
            ),
            io_chunk_bytes=env_int(env, "REGISTRY_IO_CHUNK_BYTES", defaults.io_chunk_bytes),
            max_metadata_bytes=env_int(
                env, "REGISTRY_MAX_METADATA_BYTES", defaults.max_metadata_bytes
            ),
            max_text_file_bytes=env_int(
                env, "REGISTRY_MAX_TEXT_FILE_BYTES", defaults.max_text_file_bytes
            ),
            incomplete_max_age=env_duration(
                env, "REGISTRY_INCOMPLETE_MAX_AGE", defaults.incomplete_max_age
            ),
            package_allowed_dirs=_dirs(env.get("REGISTRY_PACKAGE_ALLOWED_DIRS", "")),
            log_level=env_str(env, "LOG_LEVEL", defaults.log_level),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        # 32 MiB keeps one FetchBlob message well inside the shared 64 MiB gRPC limit.
        if not 1 <= self.fetch_chunk_bytes <= 32 * _MIB:
            raise SettingError("REGISTRY_FETCH_CHUNK_BYTES must be between 1 and 33554432")
        for name, value in (
            ("REGISTRY_IO_CHUNK_BYTES", self.io_chunk_bytes),
            ("REGISTRY_MAX_METADATA_BYTES", self.max_metadata_bytes),
            ("REGISTRY_MAX_TEXT_FILE_BYTES", self.max_text_file_bytes),
        ):
            if value < 1:
                raise SettingError(f"{name} must be positive, got {value}")
        if self.shutdown_grace < 0:
            raise SettingError("REGISTRY_SHUTDOWN_GRACE must not be negative")


def _dirs(raw: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser() for part in raw.split(":") if part.strip())
