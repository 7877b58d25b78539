"""Registry settings, read once from the environment in __main__ and passed down."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.env import (
    SettingError,
    env_address,
    env_duration,
    env_int,
    env_path,
    env_str,
)
from services.common.internal_security import InternalSecurity
from services.common.logs import LogFormat, parse_log_format
from services.common.reference import DEFAULT_REGISTRY, InvalidReference, parse_reference

__all__ = ["RegistrySettings", "RemoteSettings"]

_MIB = 1024 * 1024
_DAY = 24 * 3600.0
_DEFAULT_MODELS_PATH = Path("~/.model-runner/models")


@dataclass(frozen=True)
class RemoteSettings:
    """How the registry talks to upstream OCI registries (pull and push)."""

    # Hosts (`host[:port]`) spoken to over plain HTTP; loopback hosts always are.
    insecure_registries: tuple[str, ...] = ()
    # INSECURE_REGISTRY=true: every registry over plain HTTP (DMR's meaning).
    insecure_all: bool = False
    # Where references without a registry host go (DMR's DEFAULT_REGISTRY).
    default_registry: str = DEFAULT_REGISTRY
    # Hosts (`host[:port]`) tried in order before the upstream when pulling from Docker Hub or
    # the default registry; never used for push (DMR's MODEL_RUNNER_REGISTRY_MIRRORS).
    registry_mirrors: tuple[str, ...] = ()
    # Docker's client config, for `auths` credentials ($DOCKER_CONFIG/config.json).
    docker_config_path: Path = Path("~/.docker/config.json")
    # Layers transferred at once per pull / per push.
    pull_concurrency: int = 4
    push_concurrency: int = 2
    connect_timeout: float = 10.0
    # Longest wait for the next bytes of a response (a stalled transfer fails, then retries).
    read_timeout: float = 60.0
    # Tries per upstream call for transient failures (network, 429, 5xx); 4xx is never retried.
    attempts: int = 4
    retry_initial_wait: float = 0.5
    retry_max_wait: float = 8.0
    # Size of each read from an upstream response or a pushed file.
    transfer_chunk_bytes: int = _MIB
    # DMR throttling: a progress message after this long, or this many bytes, or at layer end.
    progress_interval: float = 0.1
    progress_bytes: int = _MIB
    # Progress messages buffered per transfer before the transfer waits for its reader.
    progress_queue: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RemoteSettings:
        defaults = cls()
        insecure = env.get("INSECURE_REGISTRY", "").strip()
        docker_dir = env.get("DOCKER_CONFIG", "").strip()
        settings = cls(
            insecure_registries=tuple(
                host.strip().lower()
                for host in insecure.split(",")
                if host.strip() and host.strip().lower() not in {"true", "false", "1", "0"}
            ),
            insecure_all=insecure.lower() in {"true", "1"},
            default_registry=_registry_host(
                "DEFAULT_REGISTRY", env.get("DEFAULT_REGISTRY", "") or defaults.default_registry
            ),
            registry_mirrors=tuple(
                _registry_host("MODEL_RUNNER_REGISTRY_MIRRORS", host)
                for host in env.get("MODEL_RUNNER_REGISTRY_MIRRORS", "").split(",")
                if host.strip()
            ),
            docker_config_path=(
                Path(docker_dir).expanduser() / "config.json"
                if docker_dir
                else defaults.docker_config_path.expanduser()
            ),
            pull_concurrency=env_int(env, "REGISTRY_PULL_CONCURRENCY", defaults.pull_concurrency),
            push_concurrency=env_int(env, "REGISTRY_PUSH_CONCURRENCY", defaults.push_concurrency),
            connect_timeout=env_duration(
                env, "REGISTRY_REMOTE_CONNECT_TIMEOUT", defaults.connect_timeout
            ),
            read_timeout=env_duration(env, "REGISTRY_REMOTE_READ_TIMEOUT", defaults.read_timeout),
            attempts=env_int(env, "REGISTRY_REMOTE_ATTEMPTS", defaults.attempts),
            retry_initial_wait=env_duration(
                env, "REGISTRY_REMOTE_RETRY_INITIAL_WAIT", defaults.retry_initial_wait
            ),
            retry_max_wait=env_duration(
                env, "REGISTRY_REMOTE_RETRY_MAX_WAIT", defaults.retry_max_wait
            ),
            transfer_chunk_bytes=env_int(
                env, "REGISTRY_TRANSFER_CHUNK_BYTES", defaults.transfer_chunk_bytes
            ),
            progress_interval=env_duration(
                env, "REGISTRY_PROGRESS_INTERVAL", defaults.progress_interval
            ),
            progress_bytes=env_int(env, "REGISTRY_PROGRESS_BYTES", defaults.progress_bytes),
            progress_queue=env_int(env, "REGISTRY_PROGRESS_QUEUE", defaults.progress_queue),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        for name, value in (
            ("REGISTRY_PULL_CONCURRENCY", self.pull_concurrency),
            ("REGISTRY_PUSH_CONCURRENCY", self.push_concurrency),
            ("REGISTRY_REMOTE_ATTEMPTS", self.attempts),
            ("REGISTRY_TRANSFER_CHUNK_BYTES", self.transfer_chunk_bytes),
            ("REGISTRY_PROGRESS_BYTES", self.progress_bytes),
            ("REGISTRY_PROGRESS_QUEUE", self.progress_queue),
        ):
            if value < 1:
                raise SettingError(f"{name} must be positive, got {value}")
        for name, seconds in (
            ("REGISTRY_REMOTE_CONNECT_TIMEOUT", self.connect_timeout),
            ("REGISTRY_REMOTE_READ_TIMEOUT", self.read_timeout),
        ):
            if seconds <= 0:
                raise SettingError(f"{name} must be positive")
        if self.retry_initial_wait < 0 or self.retry_max_wait < self.retry_initial_wait:
            raise SettingError(
                "REGISTRY_REMOTE_RETRY_INITIAL_WAIT must be >= 0 and <= "
                "REGISTRY_REMOTE_RETRY_MAX_WAIT"
            )

    def mirrors_for(self, registry: str) -> tuple[str, ...]:
        """Mirrors to try before `registry` on pull: only Docker Hub's and the default's."""
        if registry in (DEFAULT_REGISTRY, self.default_registry):
            return tuple(mirror for mirror in self.registry_mirrors if mirror != registry)
        return ()

    def is_insecure(self, host: str) -> bool:
        """Plain HTTP for `host[:port]`: loopback, listed, or everything when insecure_all."""
        return self.insecure_all or host.lower() in self.insecure_registries or is_loopback(host)


def _registry_host(name: str, raw: str) -> str:
    """`host[:port]`, lower-cased, Docker Hub aliases folded to index.docker.io."""
    host = raw.strip().rstrip("/")
    if "://" in host or "/" in host or not host:
        raise SettingError(f"{name}: expected host[:port], got {raw.strip()!r}")
    # A host the reference grammar reads as a registry (a dot, a port or `localhost`).
    try:
        parsed = parse_reference(f"{host}/probe/probe")
    except InvalidReference as exc:
        raise SettingError(f"{name}: invalid registry host {raw.strip()!r}: {exc}") from exc
    if parsed.repository != "probe/probe":
        raise SettingError(
            f"{name}: {raw.strip()!r} is not a registry host (it needs a dot, a port or "
            "must be localhost)"
        )
    return parsed.registry


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1, with or without a port."""
    name = host.lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RegistrySettings:
    # Root of the OCI image layout (oci-layout, index.json, blobs/).
    # `~` is expanded by from_env.
    models_path: Path = _DEFAULT_MODELS_PATH
    listen_address: str = "127.0.0.1:50051"
    # Mutual TLS and the internal token for its gRPC server (MODEL_RUNNER_TLS_*).
    security: InternalSecurity = field(default_factory=InternalSecurity)
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
    # Largest GGUF PackageUpload accepts (64 GiB).
    max_upload_bytes: int = 64 * 1024 * _MIB
    # A refused upload is read to its end (for at most this long) before the error is answered:
    # a status sent while the client still writes reaches it as INTERNAL (grpc/grpc#36066).
    upload_drain_timeout: float = 30.0
    # Directories Package may read from; empty means any path the registry can read.
    package_allowed_dirs: tuple[Path, ...] = ()
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    # Prometheus endpoint (GET /metrics); None: off.
    metrics_address: str | None = "127.0.0.1:9091"
    # Scrapes within this many seconds of the last walk of the store reuse its figures.
    metrics_store_interval: float = 30.0
    remote: RemoteSettings = field(default_factory=RemoteSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RegistrySettings:
        defaults = cls()
        settings = cls(
            models_path=env_path(env, "MODELS_PATH", defaults.models_path),
            listen_address=env_str(env, "REGISTRY_LISTEN_ADDRESS", defaults.listen_address),
            security=InternalSecurity.from_env(env),
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
            max_upload_bytes=env_int(env, "REGISTRY_MAX_UPLOAD_BYTES", defaults.max_upload_bytes),
            upload_drain_timeout=env_duration(
                env, "REGISTRY_UPLOAD_DRAIN_TIMEOUT", defaults.upload_drain_timeout
            ),
            package_allowed_dirs=_dirs(env.get("REGISTRY_PACKAGE_ALLOWED_DIRS", "")),
            log_level=env_str(env, "LOG_LEVEL", defaults.log_level),
            log_format=parse_log_format(env_str(env, "LOG_FORMAT", defaults.log_format)),
            metrics_address=env_address(env, "REGISTRY_METRICS_ADDRESS", "127.0.0.1:9091"),
            metrics_store_interval=env_duration(
                env, "REGISTRY_METRICS_STORE_INTERVAL", defaults.metrics_store_interval
            ),
            remote=RemoteSettings.from_env(env),
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
            ("REGISTRY_MAX_UPLOAD_BYTES", self.max_upload_bytes),
        ):
            if value < 1:
                raise SettingError(f"{name} must be positive, got {value}")
        if self.shutdown_grace < 0:
            raise SettingError("REGISTRY_SHUTDOWN_GRACE must not be negative")
        if self.upload_drain_timeout < 0:
            raise SettingError("REGISTRY_UPLOAD_DRAIN_TIMEOUT must not be negative")
        if self.metrics_store_interval < 0:
            raise SettingError("REGISTRY_METRICS_STORE_INTERVAL must not be negative")


def _dirs(raw: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser() for part in raw.split(":") if part.strip())
