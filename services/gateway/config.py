"""Gateway settings, read once from the environment by `__main__` and passed down."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.env import SettingError, env_bool, env_duration, env_int, env_str
from services.common.internal_security import InternalSecurity
from services.common.logs import LogFormat, parse_log_format

__all__ = ["GatewaySettings"]

_MIB = 1024 * 1024
_MIN_AFFINITY_KEY_CHARS = 64


@dataclass(frozen=True)
class GatewaySettings:
    port: int = 12434
    listen_host: str = "127.0.0.1"
    registry_address: str = "127.0.0.1:50051"
    scheduler_address: str = "127.0.0.1:50052"
    # Mutual TLS and the internal token for its channels to the services (MODEL_RUNNER_TLS_*).
    security: InternalSecurity = field(default_factory=InternalSecurity)
    # Whole inference request: Assign (including a cold load) plus generation.
    request_timeout: float = 600.0
    # Assign alone; long enough to cover fetching blobs and starting llama-server.
    assign_timeout: float = 330.0
    # Model management and engine calls (list, inspect, tag, delete, ps, unload).
    rpc_timeout: float = 30.0
    # A whole pull, push or package upload through the registry (POST /models/create,
    # /models/{name}/push, /models/package).
    transfer_timeout: float = 3600.0
    # DMR's limit for inference bodies.
    max_body_bytes: int = 10 * _MIB
    # Size of each message relaying an uploaded GGUF (POST /models/package) to the registry.
    upload_chunk_bytes: int = _MIB
    # Non-streaming answers are collected before they are sent; this bounds that buffer.
    max_response_bytes: int = 256 * _MIB
    # Fresh Assigns after a worker answered UNAVAILABLE before the response head.
    unavailable_retries: int = 1
    # Telling the scheduler about a worker the gateway could not reach.
    release_timeout: float = 2.0
    # Retry-After sent with 503 when the scheduler's queue is full.
    retry_after: float = 1.0
    # Cached gRPC channels to workers (idle ones beyond this are closed, least recently used first).
    worker_channels: int = 64
    # Concurrent HTTP connections and requests; beyond it uvicorn answers 503 at once.
    max_concurrency: int = 1024
    # Idle HTTP keep-alive connections are closed after this.
    keep_alive_timeout: float = 5.0
    # A connection must deliver each request's headers within this (DMR's ReadHeaderTimeout).
    header_timeout: float = 10.0
    # On SIGTERM: how long in-flight responses may finish before they are cut.
    shutdown_grace: float = 30.0
    access_log: bool = True
    # DISABLE_METRICS: no `GET /metrics` route at all (404), as in DMR.
    metrics_enabled: bool = True
    # One worker's ScrapeMetrics call for `GET /metrics`; above WORKER_METRICS_TIMEOUT so a worker
    # can still answer for its other runners when one of them stalls.
    metrics_timeout: float = 10.0
    # Responses API store (openai/responses_store.py): at most this many responses (0: none) ...
    responses_max_stored: int = 1000
    # ... and this many bytes of them (each counts its response, input and conversation).
    responses_max_stored_bytes: int = 64 * _MIB
    # Routing hints sent with every Assign (services/gateway/hints.py): a completions prompt is
    # hashed in chunks of this many characters (only full chunks) ...
    prefix_chunk_chars: int = 256
    # ... and at most this many prefix hashes go with one request (the shortest prefixes: a
    # conversation's first turns are what its later turns share). 0 sends none.
    max_prefix_hashes: int = 32
    # Longer affinity keys (X-Session-ID, the OpenAI `user`) are replaced by a hash, not refused.
    max_affinity_key_chars: int = 256
    # Allowed CORS origins (DMR_ORIGINS); it replaces the default (localhost and 127.0.0.1 on any
    # port), "*" allows all. Empty: the default.
    cors_origins: tuple[str, ...] = ()
    # MODEL_RUNNER_SOCK: listen on this Unix socket instead of TCP (no CORS there), as DMR does
    # when MODEL_RUNNER_PORT is not set. None: TCP.
    socket_path: str | None = None
    # API keys (MODEL_RUNNER_API_KEYS and the lines of MODEL_RUNNER_API_KEYS_FILE); empty: no auth.
    # Kept out of repr: settings may be logged, keys never are.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Paths served without a key even when keys are set (exact match); "/" is the liveness ping.
    auth_exempt_paths: tuple[str, ...] = ("/",)
    # Per key (per client address without keys): requests and tokens a minute; 0 is unlimited.
    rate_limit_rpm: int = 0
    rate_limit_tpm: int = 0
    # Clients whose rate-limit state is kept at once (least recently seen dropped first).
    rate_limit_max_clients: int = 10_000
    # Upper bound on max_tokens (and num_predict, max_output_tokens); above it is 400. 0: no cap.
    max_tokens: int = 0
    log_level: str = "INFO"
    # LOG_FORMAT: `json` lines (with the request id) for collectors, or `text`.
    log_format: LogFormat = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        defaults = cls()
        settings = cls(
            port=env_int(env, "MODEL_RUNNER_PORT", defaults.port),
            listen_host=env_str(env, "GATEWAY_LISTEN_HOST", defaults.listen_host),
            registry_address=env_str(env, "REGISTRY_ADDRESS", defaults.registry_address),
            scheduler_address=env_str(env, "SCHEDULER_ADDRESS", defaults.scheduler_address),
            security=InternalSecurity.from_env(env),
            request_timeout=env_duration(env, "GATEWAY_REQUEST_TIMEOUT", defaults.request_timeout),
            assign_timeout=env_duration(env, "GATEWAY_ASSIGN_TIMEOUT", defaults.assign_timeout),
            rpc_timeout=env_duration(env, "GATEWAY_RPC_TIMEOUT", defaults.rpc_timeout),
            transfer_timeout=env_duration(
                env, "GATEWAY_TRANSFER_TIMEOUT", defaults.transfer_timeout
            ),
            max_body_bytes=env_int(env, "GATEWAY_MAX_BODY_BYTES", defaults.max_body_bytes),
            upload_chunk_bytes=env_int(
                env, "GATEWAY_UPLOAD_CHUNK_BYTES", defaults.upload_chunk_bytes
            ),
            max_response_bytes=env_int(
                env, "GATEWAY_MAX_RESPONSE_BYTES", defaults.max_response_bytes
            ),
            unavailable_retries=env_int(
                env, "GATEWAY_UNAVAILABLE_RETRIES", defaults.unavailable_retries
            ),
            release_timeout=env_duration(env, "GATEWAY_RELEASE_TIMEOUT", defaults.release_timeout),
            retry_after=env_duration(env, "GATEWAY_RETRY_AFTER", defaults.retry_after),
            worker_channels=env_int(env, "GATEWAY_WORKER_CHANNELS", defaults.worker_channels),
            max_concurrency=env_int(env, "GATEWAY_MAX_CONCURRENCY", defaults.max_concurrency),
            responses_max_stored=env_int(
                env, "GATEWAY_RESPONSES_MAX_STORED", defaults.responses_max_stored
            ),
            responses_max_stored_bytes=env_int(
                env, "GATEWAY_RESPONSES_MAX_STORED_BYTES", defaults.responses_max_stored_bytes
            ),
            keep_alive_timeout=env_duration(
                env, "GATEWAY_KEEP_ALIVE_TIMEOUT", defaults.keep_alive_timeout
            ),
            header_timeout=env_duration(env, "GATEWAY_HEADER_TIMEOUT", defaults.header_timeout),
            shutdown_grace=env_duration(env, "GATEWAY_SHUTDOWN_GRACE", defaults.shutdown_grace),
            access_log=env_bool(env, "GATEWAY_ACCESS_LOG", defaults.access_log),
            metrics_enabled=not env_bool(env, "DISABLE_METRICS", not defaults.metrics_enabled),
            metrics_timeout=env_duration(env, "GATEWAY_METRICS_TIMEOUT", defaults.metrics_timeout),
            prefix_chunk_chars=env_int(
                env, "GATEWAY_PREFIX_CHUNK_CHARS", defaults.prefix_chunk_chars
            ),
            max_prefix_hashes=env_int(env, "GATEWAY_MAX_PREFIX_HASHES", defaults.max_prefix_hashes),
            max_affinity_key_chars=env_int(
                env, "GATEWAY_MAX_AFFINITY_KEY_CHARS", defaults.max_affinity_key_chars
            ),
            cors_origins=_csv(env.get("DMR_ORIGINS", "")),
            socket_path=_socket_path(env),
            api_keys=_api_keys(env),
            auth_exempt_paths=_csv(env["GATEWAY_AUTH_EXEMPT_PATHS"])
            if "GATEWAY_AUTH_EXEMPT_PATHS" in env
            else defaults.auth_exempt_paths,
            rate_limit_rpm=env_int(env, "GATEWAY_RATE_LIMIT_RPM", defaults.rate_limit_rpm),
            rate_limit_tpm=env_int(env, "GATEWAY_RATE_LIMIT_TPM", defaults.rate_limit_tpm),
            rate_limit_max_clients=env_int(
                env, "GATEWAY_RATE_LIMIT_MAX_CLIENTS", defaults.rate_limit_max_clients
            ),
            max_tokens=env_int(env, "GATEWAY_MAX_TOKENS", defaults.max_tokens),
            log_level=env_str(env, "LOG_LEVEL", defaults.log_level).upper(),
            log_format=parse_log_format(env_str(env, "LOG_FORMAT", defaults.log_format)),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise SettingError naming the variable whose value cannot work."""
        if not 0 < self.port < 65536:
            raise SettingError(f"MODEL_RUNNER_PORT must be a TCP port, got {self.port}")
        positive = {
            "GATEWAY_REQUEST_TIMEOUT": self.request_timeout,
            "GATEWAY_ASSIGN_TIMEOUT": self.assign_timeout,
            "GATEWAY_RPC_TIMEOUT": self.rpc_timeout,
            "GATEWAY_TRANSFER_TIMEOUT": self.transfer_timeout,
            "GATEWAY_MAX_BODY_BYTES": self.max_body_bytes,
            "GATEWAY_MAX_RESPONSE_BYTES": self.max_response_bytes,
            "GATEWAY_RELEASE_TIMEOUT": self.release_timeout,
            "GATEWAY_WORKER_CHANNELS": self.worker_channels,
            "GATEWAY_MAX_CONCURRENCY": self.max_concurrency,
            "GATEWAY_KEEP_ALIVE_TIMEOUT": self.keep_alive_timeout,
            "GATEWAY_HEADER_TIMEOUT": self.header_timeout,
            "GATEWAY_METRICS_TIMEOUT": self.metrics_timeout,
            "GATEWAY_PREFIX_CHUNK_CHARS": self.prefix_chunk_chars,
            "GATEWAY_RESPONSES_MAX_STORED_BYTES": self.responses_max_stored_bytes,
            "GATEWAY_RATE_LIMIT_MAX_CLIENTS": self.rate_limit_max_clients,
        }
        for name, value in positive.items():
            if value <= 0:
                raise SettingError(f"{name} must be positive, got {value}")
        non_negative = {
            "GATEWAY_UNAVAILABLE_RETRIES": self.unavailable_retries,
            "GATEWAY_RETRY_AFTER": self.retry_after,
            "GATEWAY_SHUTDOWN_GRACE": self.shutdown_grace,
            "GATEWAY_MAX_PREFIX_HASHES": self.max_prefix_hashes,
            "GATEWAY_RESPONSES_MAX_STORED": self.responses_max_stored,
            "GATEWAY_RATE_LIMIT_RPM": self.rate_limit_rpm,
            "GATEWAY_RATE_LIMIT_TPM": self.rate_limit_tpm,
            "GATEWAY_MAX_TOKENS": self.max_tokens,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise SettingError(f"{name} must not be negative, got {value}")
        # Half the shared 64 MiB gRPC message limit leaves room for the message's framing.
        if not 1 <= self.upload_chunk_bytes <= 32 * _MIB:
            raise SettingError("GATEWAY_UPLOAD_CHUNK_BYTES must be between 1 and 33554432")
        # A hashed key is its kind ("session:") plus 32 hex digits; a smaller bound cannot hold it.
        if self.max_affinity_key_chars < _MIN_AFFINITY_KEY_CHARS:
            raise SettingError(
                f"GATEWAY_MAX_AFFINITY_KEY_CHARS must be at least {_MIN_AFFINITY_KEY_CHARS}, "
                f"got {self.max_affinity_key_chars}"
            )
        if self.log_level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise SettingError(
                f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"
            )


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _socket_path(env: Mapping[str, str]) -> str | None:
    # DMR: MODEL_RUNNER_PORT set means TCP; only without it does MODEL_RUNNER_SOCK apply.
    if env.get("MODEL_RUNNER_PORT", "").strip():
        return None
    return env.get("MODEL_RUNNER_SOCK", "").strip() or None


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    keys = list(_csv(env.get("MODEL_RUNNER_API_KEYS", "")))
    path = env.get("MODEL_RUNNER_API_KEYS_FILE", "").strip()
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            # The message names the file, never its contents.
            raise SettingError(f"MODEL_RUNNER_API_KEYS_FILE: cannot read {path}: {exc}") from exc
        keys.extend(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    return tuple(dict.fromkeys(keys))
