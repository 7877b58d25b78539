"""Settings of the local stack launcher (`make run`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.env import env_duration, env_int, env_path, env_str
from services.common.internal_security import InternalSecurity

__all__ = ["StackSettings"]


@dataclass(frozen=True)
class StackSettings:
    gateway_port: int
    gateway_host: str
    registry_address: str
    scheduler_address: str
    worker_address: str
    models_path: Path
    worker_cache_path: Path
    log_dir: Path
    ready_timeout: float
    stop_timeout: float
    bundled_model: str
    log_level: str
    # The services read the same MODEL_RUNNER_TLS_* / token variables from the environment the
    # launcher passes through; the launcher's own calls to them need it too.
    security: InternalSecurity = field(default_factory=InternalSecurity)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StackSettings:
        home = Path("~/.model-runner")
        return cls(
            gateway_port=env_int(env, "MODEL_RUNNER_PORT", 12434),
            gateway_host=env_str(env, "GATEWAY_LISTEN_HOST", "127.0.0.1"),
            registry_address=env_str(env, "REGISTRY_ADDRESS", "127.0.0.1:50051"),
            scheduler_address=env_str(env, "SCHEDULER_ADDRESS", "127.0.0.1:50052"),
            worker_address=env_str(env, "WORKER_ADVERTISE_ADDRESS", "127.0.0.1:50053"),
            models_path=env_path(env, "MODELS_PATH", home / "models"),
            worker_cache_path=env_path(env, "WORKER_CACHE_PATH", home / "worker-cache"),
            log_dir=env_path(env, "MODEL_RUNNER_LOG_DIR", Path("logs")),
            ready_timeout=env_duration(env, "STACK_READY_TIMEOUT", 60.0),
            stop_timeout=env_duration(env, "STACK_STOP_TIMEOUT", 20.0),
            bundled_model=env_str(env, "STACK_BUNDLED_MODEL", "ai/smollm2"),
            log_level=env_str(env, "LOG_LEVEL", "INFO"),
            security=InternalSecurity.from_env(env),
        )
