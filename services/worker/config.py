"""The worker's settings, read once from the environment in `__main__`."""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.env import (
    SettingError,
    env_address,
    env_duration,
    env_float,
    env_int,
    env_path,
    env_str,
    env_tags,
)
from services.common.internal_security import InternalSecurity
from services.common.logs import LogFormat, parse_log_format
from services.worker.args import RESERVED_FLAGS, reserved_flag

__all__ = [
    "ENGINES",
    "LLAMA_CPP_ENGINE",
    "MAX_RUNTIME_DIR_CHARS",
    "SIMULATED_ENGINE",
    "WorkerSettings",
]

# Unix socket paths are limited to 107 bytes; runner socket names need about 40 of them.
MAX_RUNTIME_DIR_CHARS = 64
LLAMA_CPP_ENGINE = "llama.cpp"
SIMULATED_ENGINE = "simulated"
ENGINES = (LLAMA_CPP_ENGINE, SIMULATED_ENGINE)
# A simulated worker must not report the host's memory: a fleet of 100 on one machine would
# claim 100 times what it has.
_SIMULATED_MEMORY_BYTES = 16 * 1024**3
_WILDCARD_HOSTS = {"", "0.0.0.0", "[::]", "::"}


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise SettingError(f"{name} must be positive, got {value}")
    return value


def _engine(env: Mapping[str, str]) -> str:
    engine = env_str(env, "WORKER_ENGINE", LLAMA_CPP_ENGINE)
    if engine not in ENGINES:
        raise SettingError(f"WORKER_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


def _non_negative(name: str, value: int) -> int:
    if value < 0:
        raise SettingError(f"{name} must be >= 0, got {value}")
    return value


def _non_negative_duration(name: str, value: float) -> float:
    if value < 0:
        raise SettingError(f"{name} must be >= 0, got {value}")
    return value


def _split_address(name: str, address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise SettingError(f"{name} must be host:port, got {address!r}")
    return host, int(port)


def _llama_args(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("LLAMA_ARGS", "")
    try:
        args = tuple(shlex.split(raw))
    except ValueError as exc:
        raise SettingError(f"LLAMA_ARGS: {exc}") from exc
    for arg in args:
        if reserved_flag(arg):
            raise SettingError(
                f"LLAMA_ARGS may not set {arg.split('=')[0]}: the worker chooses "
                f"{', '.join(sorted(RESERVED_FLAGS))} itself (a model's context size and "
                "slots are set through the scheduler's per-model configuration)"
            )
    return args


def _default_runtime_dir() -> Path:
    return Path("/tmp") / f"model-runner-{os.getuid()}"


@dataclass(frozen=True)
class WorkerSettings:
    """Every knob of the worker; durations are seconds."""

    listen_address: str = "127.0.0.1:50053"
    # Empty: derived from the listen address once the port is bound (see `identity`).
    advertise_address: str = ""
    worker_id: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    # Least recently used blobs are evicted above this; 0: no limit.
    cache_max_bytes: int = 100 * 1024**3
    cache_path: Path = field(
        default_factory=lambda: Path("~/.model-runner/worker-cache").expanduser()
    )
    # 0: detect from /proc/meminfo.
    memory_bytes: int = 0
    runtime_dir: Path = field(default_factory=_default_runtime_dir)
    registry_address: str = "127.0.0.1:50051"
    scheduler_address: str = "127.0.0.1:50052"
    # Mutual TLS and the internal token for its server and its channels (MODEL_RUNNER_TLS_*).
    security: InternalSecurity = field(default_factory=InternalSecurity)
    llama_server_path: Path | None = None
    llama_args: tuple[str, ...] = ()
    # 0: llama.cpp's own default (every core). Measured on 2 cores (docs/benchmarks.md): all
    # cores give the gateway path 60% more tokens/s at concurrency 4-8 than one thread, although
    # the worker's and gateway's per-token work then competes with llama.cpp; on a host shared
    # with other busy processes, 1 thread avoids llama.cpp's spinning threads being preempted.
    llama_threads: int = 0
    ready_timeout: float = 300.0
    health_poll_interval: float = 0.25
    stop_timeout: float = 10.0
    stream_idle_timeout: float = 120.0
    request_timeout: float = 600.0
    connect_timeout: float = 5.0
    max_runners: int = 4
    max_connections: int = 64
    drain_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    rpc_timeout: float = 5.0
    retry_max_backoff: float = 10.0
    blob_idle_timeout: float = 60.0
    blob_fetch_timeout: float = 3600.0
    runner_log_max_bytes: int = 16 * 1024 * 1024
    # ScrapeMetrics: the whole GET /metrics of one runner; a slower runner is left out.
    metrics_timeout: float = 5.0
    # ScrapeMetrics: one runner's metrics text; a larger answer is left out.
    metrics_max_bytes: int = 1024 * 1024
    shutdown_grace: float = 10.0
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    # The worker's own Prometheus endpoint (GET /metrics); None: off.
    metrics_address: str | None = "127.0.0.1:9093"
    # "llama.cpp" (a llama-server per model) or "simulated" (no process, no blob download).
    engine: str = LLAMA_CPP_ENGINE
    # Simulated engine: how long a Load takes.
    sim_load_time: float = 1.0
    # Simulated engine: tokens generated per second, per slot.
    sim_tokens_per_second: float = 50.0
    # Simulated engine: prompt tokens processed per second (prompt-cache hits cost nothing).
    sim_prompt_tokens_per_second: float = 1000.0
    # Simulated engine: tokens generated when a request sets no max_tokens.
    sim_max_tokens: int = 16
    # Simulated engine: slots of a runner whose LoadRequest.parallel is 0 (llama-server's auto).
    sim_parallel: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        listen = env_str(env, "WORKER_LISTEN_ADDRESS", cls.listen_address)
        _split_address("WORKER_LISTEN_ADDRESS", listen)
        advertise = env_str(env, "WORKER_ADVERTISE_ADDRESS", "")
        if advertise:
            _split_address("WORKER_ADVERTISE_ADDRESS", advertise)
        runtime_dir = env_path(env, "WORKER_RUNTIME_DIR", _default_runtime_dir())
        if len(str(runtime_dir)) > MAX_RUNTIME_DIR_CHARS:
            raise SettingError(
                f"WORKER_RUNTIME_DIR {str(runtime_dir)!r} is longer than "
                f"{MAX_RUNTIME_DIR_CHARS} characters: llama-server's Unix socket path would "
                "exceed the 107-byte limit; choose a shorter directory"
            )
        server_path = env.get("LLAMA_SERVER_PATH", "").strip()
        engine = _engine(env)
        memory = _non_negative("WORKER_MEMORY_BYTES", env_int(env, "WORKER_MEMORY_BYTES", 0))
        if engine == SIMULATED_ENGINE and memory == 0:
            memory = _SIMULATED_MEMORY_BYTES

        def duration(name: str, default: float) -> float:
            return _positive(name, env_duration(env, name, default))

        def count(name: str, default: int) -> int:
            return int(_positive(name, env_int(env, name, default)))

        def rate(name: str, default: float) -> float:
            return _positive(name, env_float(env, name, default))

        return cls(
            listen_address=listen,
            advertise_address=advertise,
            worker_id=env_str(env, "WORKER_ID", ""),
            tags=env_tags(env, "WORKER_TAGS"),
            cache_path=env_path(env, "WORKER_CACHE_PATH", Path("~/.model-runner/worker-cache")),
            memory_bytes=memory,
            cache_max_bytes=_non_negative(
                "WORKER_CACHE_MAX_BYTES",
                env_int(env, "WORKER_CACHE_MAX_BYTES", cls.cache_max_bytes),
            ),
            runtime_dir=runtime_dir,
            registry_address=env_str(env, "REGISTRY_ADDRESS", cls.registry_address),
            scheduler_address=env_str(env, "SCHEDULER_ADDRESS", cls.scheduler_address),
            security=InternalSecurity.from_env(env),
            llama_server_path=Path(server_path).expanduser() if server_path else None,
            llama_args=_llama_args(env),
            llama_threads=_non_negative(
                "WORKER_LLAMA_THREADS", env_int(env, "WORKER_LLAMA_THREADS", cls.llama_threads)
            ),
            ready_timeout=duration("WORKER_READY_TIMEOUT", cls.ready_timeout),
            health_poll_interval=duration("WORKER_HEALTH_POLL_INTERVAL", cls.health_poll_interval),
            stop_timeout=duration("WORKER_STOP_TIMEOUT", cls.stop_timeout),
            stream_idle_timeout=duration("WORKER_STREAM_IDLE_TIMEOUT", cls.stream_idle_timeout),
            request_timeout=duration("WORKER_REQUEST_TIMEOUT", cls.request_timeout),
            connect_timeout=duration("WORKER_CONNECT_TIMEOUT", cls.connect_timeout),
            max_runners=count("WORKER_MAX_RUNNERS", cls.max_runners),
            max_connections=count("WORKER_MAX_CONNECTIONS", cls.max_connections),
            drain_timeout=duration("WORKER_DRAIN_TIMEOUT", cls.drain_timeout),
            heartbeat_interval=duration("WORKER_HEARTBEAT_INTERVAL", cls.heartbeat_interval),
            rpc_timeout=duration("WORKER_RPC_TIMEOUT", cls.rpc_timeout),
            retry_max_backoff=duration("WORKER_RETRY_MAX_BACKOFF", cls.retry_max_backoff),
            blob_idle_timeout=duration("WORKER_BLOB_IDLE_TIMEOUT", cls.blob_idle_timeout),
            blob_fetch_timeout=duration("WORKER_BLOB_FETCH_TIMEOUT", cls.blob_fetch_timeout),
            runner_log_max_bytes=count("WORKER_RUNNER_LOG_MAX_BYTES", cls.runner_log_max_bytes),
            metrics_timeout=duration("WORKER_METRICS_TIMEOUT", cls.metrics_timeout),
            metrics_max_bytes=count("WORKER_METRICS_MAX_BYTES", cls.metrics_max_bytes),
            shutdown_grace=duration("WORKER_SHUTDOWN_GRACE", cls.shutdown_grace),
            log_level=env_str(env, "LOG_LEVEL", cls.log_level),
            log_format=parse_log_format(env_str(env, "LOG_FORMAT", cls.log_format)),
            metrics_address=env_address(env, "WORKER_METRICS_ADDRESS", "127.0.0.1:9093"),
            engine=engine,
            sim_load_time=_non_negative_duration(
                "WORKER_SIM_LOAD_TIME", env_duration(env, "WORKER_SIM_LOAD_TIME", cls.sim_load_time)
            ),
            sim_tokens_per_second=rate("WORKER_SIM_TOKENS_PER_SECOND", cls.sim_tokens_per_second),
            sim_prompt_tokens_per_second=rate(
                "WORKER_SIM_PROMPT_TOKENS_PER_SECOND", cls.sim_prompt_tokens_per_second
            ),
            sim_max_tokens=count("WORKER_SIM_MAX_TOKENS", cls.sim_max_tokens),
            sim_parallel=count("WORKER_SIM_PARALLEL", cls.sim_parallel),
        )

    def identity(self, bound_port: int) -> tuple[str, str]:
        """(worker id, advertised address) once the gRPC port is bound.

        A wildcard listen host is advertised as the host name, which peers on other machines can
        resolve; an explicit WORKER_ADVERTISE_ADDRESS always wins.
        """
        host, _ = _split_address("WORKER_LISTEN_ADDRESS", self.listen_address)
        if self.advertise_address:
            address = self.advertise_address
        else:
            shown = socket.gethostname() if host in _WILDCARD_HOSTS else host
            address = f"{shown}:{bound_port}"
        worker_id = self.worker_id or f"{socket.gethostname()}-{bound_port}"
        return worker_id, address
