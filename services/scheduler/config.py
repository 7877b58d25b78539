"""Scheduler settings, read once from the environment in `__main__`."""

from __future__ import annotations

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
)
from services.common.internal_security import InternalSecurity
from services.common.logs import LogFormat, parse_log_format
from services.scheduler.routing import POLICY_NAMES

__all__ = ["SchedulerSettings"]

_DEFAULT_KEEP_ALIVE = 300.0
_DEFAULT_HEARTBEAT_INTERVAL = 2.0
_MISSED_HEARTBEATS = 3


def _default_state_path() -> Path:
    return Path("~/.model-runner/scheduler/model-configs.json").expanduser()


@dataclass(frozen=True)
class SchedulerSettings:
    listen_address: str = "127.0.0.1:50052"
    registry_address: str = "127.0.0.1:50051"
    # Mutual TLS and the internal token for its server and its channels (MODEL_RUNNER_TLS_*).
    security: InternalSecurity = field(default_factory=InternalSecurity)
    # Seconds an idle runner stays loaded; None means never unload (MODEL_KEEP_ALIVE=-1).
    keep_alive: float | None = _DEFAULT_KEEP_ALIVE
    heartbeat_interval: float = _DEFAULT_HEARTBEAT_INTERVAL
    worker_timeout: float = _DEFAULT_HEARTBEAT_INTERVAL * _MISSED_HEARTBEATS
    load_timeout: float = 300.0
    lease_timeout: float = 900.0
    # Requests waiting per model, for a load or for a free slot; more -> 503 at once.
    max_waiting_per_model: int = 256
    # Longest wait for a free slot once the model is loaded (a cold load adds load_timeout).
    queue_timeout: float = 60.0
    max_leases: int = 65_536
    # Assign calls being answered at once (queued ones included); more -> RESOURCE_EXHAUSTED
    # (queue-full) at once, so a flood of Assigns cannot starve heartbeats of the event loop.
    max_assigns_in_flight: int = 4096
    rpc_timeout: float = 10.0
    # 0 disables the cache: every Assign asks the registry.
    resolve_cache_ttl: float = 2.0
    resolve_cache_entries: int = 1024
    shutdown_grace: float = 10.0
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    # Prometheus endpoint (GET /metrics); None: off.
    metrics_address: str | None = "127.0.0.1:9092"
    # Per-model configurations (/engines/_configure); None keeps them in memory only.
    state_path: Path | None = field(default_factory=_default_state_path)
    # Tokens of context per slot when neither the configuration nor the package says; a model
    # trained on less gets its training context.
    default_context_size: int = 4096
    # llama-server slots per replica when the configuration does not say.
    default_parallel: int = 4
    # llama-server's --cache-ram (prompt cache in RAM, MiB) when the configuration does not set
    # it: llama.cpp's own default (8 GiB) would make every memory estimate meaningless.
    default_prompt_cache_mib: int = 256
    # Replicas per model when the configuration does not say (1: no load-based scale-up).
    default_max_replicas: int = 1
    routing: str = "affinity"
    affinity_entries: int = 100_000
    # Affinity yields to load when its replica has more than this many requests above the least
    # busy one; capped at the replica's slots - 2 (but >= 1 unless 0) so that it bites with few
    # slots (routing.py).
    affinity_max_imbalance: int = 2
    # Longest a request waits for a slot on the replica that holds its conversation when that
    # replica is full and another has a free slot (a cold prefill elsewhere costs more than a
    # short wait); 0: never wait, take the free replica.
    affinity_wait: float = 0.5
    # Scale up when waiting requests per replica stay above this for scale_up_after.
    scale_up_queue: float = 2.0
    scale_up_after: float = 2.0
    # A replica above the model's minimum (and above one) idle this long is unloaded.
    scale_down_after: float = 60.0
    autoscale_interval: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SchedulerSettings:
        keep_alive = env_duration(env, "MODEL_KEEP_ALIVE", _DEFAULT_KEEP_ALIVE)
        interval = env_duration(env, "SCHEDULER_HEARTBEAT_INTERVAL", _DEFAULT_HEARTBEAT_INTERVAL)
        settings = cls(
            listen_address=env_str(env, "SCHEDULER_LISTEN_ADDRESS", cls.listen_address),
            registry_address=env_str(env, "REGISTRY_ADDRESS", cls.registry_address),
            security=InternalSecurity.from_env(env),
            keep_alive=None if keep_alive < 0 else keep_alive,
            heartbeat_interval=interval,
            worker_timeout=env_duration(
                env, "SCHEDULER_WORKER_TIMEOUT", interval * _MISSED_HEARTBEATS
            ),
            load_timeout=env_duration(env, "SCHEDULER_LOAD_TIMEOUT", cls.load_timeout),
            lease_timeout=env_duration(env, "SCHEDULER_LEASE_TIMEOUT", cls.lease_timeout),
            max_waiting_per_model=env_int(
                env, "SCHEDULER_MAX_WAITING_PER_MODEL", cls.max_waiting_per_model
            ),
            max_leases=env_int(env, "SCHEDULER_MAX_LEASES", cls.max_leases),
            max_assigns_in_flight=env_int(
                env, "SCHEDULER_MAX_ASSIGNS_IN_FLIGHT", cls.max_assigns_in_flight
            ),
            rpc_timeout=env_duration(env, "SCHEDULER_RPC_TIMEOUT", cls.rpc_timeout),
            resolve_cache_ttl=env_duration(
                env, "SCHEDULER_RESOLVE_CACHE_TTL", cls.resolve_cache_ttl
            ),
            resolve_cache_entries=env_int(
                env, "SCHEDULER_RESOLVE_CACHE_ENTRIES", cls.resolve_cache_entries
            ),
            shutdown_grace=env_duration(env, "SCHEDULER_SHUTDOWN_GRACE", cls.shutdown_grace),
            log_level=env_str(env, "LOG_LEVEL", cls.log_level),
            log_format=parse_log_format(env_str(env, "LOG_FORMAT", cls.log_format)),
            metrics_address=env_address(env, "SCHEDULER_METRICS_ADDRESS", "127.0.0.1:9092"),
            state_path=_state_path(env),
            default_context_size=env_int(
                env, "SCHEDULER_DEFAULT_CONTEXT_SIZE", cls.default_context_size
            ),
            default_parallel=env_int(env, "SCHEDULER_DEFAULT_PARALLEL", cls.default_parallel),
            default_prompt_cache_mib=env_int(
                env, "SCHEDULER_PROMPT_CACHE_MIB", cls.default_prompt_cache_mib
            ),
            default_max_replicas=env_int(env, "SCHEDULER_MAX_REPLICAS", cls.default_max_replicas),
            queue_timeout=env_duration(env, "SCHEDULER_QUEUE_TIMEOUT", cls.queue_timeout),
            routing=env_str(env, "SCHEDULER_ROUTING", cls.routing),
            affinity_entries=env_int(env, "SCHEDULER_AFFINITY_ENTRIES", cls.affinity_entries),
            affinity_max_imbalance=env_int(
                env, "SCHEDULER_AFFINITY_MAX_IMBALANCE", cls.affinity_max_imbalance
            ),
            affinity_wait=env_duration(env, "SCHEDULER_AFFINITY_WAIT", cls.affinity_wait),
            scale_up_queue=env_float(env, "SCHEDULER_SCALE_UP_QUEUE", cls.scale_up_queue),
            scale_up_after=env_duration(env, "SCHEDULER_SCALE_UP_AFTER", cls.scale_up_after),
            scale_down_after=env_duration(env, "SCHEDULER_SCALE_DOWN_AFTER", cls.scale_down_after),
            autoscale_interval=env_duration(
                env, "SCHEDULER_AUTOSCALE_INTERVAL", cls.autoscale_interval
            ),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject settings that would make the scheduler misbehave rather than fail at start-up."""
        positive = {
            "SCHEDULER_HEARTBEAT_INTERVAL": self.heartbeat_interval,
            "SCHEDULER_LOAD_TIMEOUT": self.load_timeout,
            "SCHEDULER_LEASE_TIMEOUT": self.lease_timeout,
            "SCHEDULER_RPC_TIMEOUT": self.rpc_timeout,
            "SCHEDULER_MAX_WAITING_PER_MODEL": self.max_waiting_per_model,
            "SCHEDULER_MAX_LEASES": self.max_leases,
            "SCHEDULER_MAX_ASSIGNS_IN_FLIGHT": self.max_assigns_in_flight,
            "SCHEDULER_RESOLVE_CACHE_ENTRIES": self.resolve_cache_entries,
            "SCHEDULER_QUEUE_TIMEOUT": self.queue_timeout,
            "SCHEDULER_DEFAULT_CONTEXT_SIZE": self.default_context_size,
            "SCHEDULER_DEFAULT_PARALLEL": self.default_parallel,
            "SCHEDULER_MAX_REPLICAS": self.default_max_replicas,
            "SCHEDULER_AFFINITY_ENTRIES": self.affinity_entries,
            "SCHEDULER_SCALE_UP_QUEUE": self.scale_up_queue,
            "SCHEDULER_SCALE_UP_AFTER": self.scale_up_after,
            "SCHEDULER_SCALE_DOWN_AFTER": self.scale_down_after,
            "SCHEDULER_AUTOSCALE_INTERVAL": self.autoscale_interval,
        }
        for name, value in positive.items():
            if value <= 0:
                raise SettingError(f"{name} must be positive, got {value}")
        if self.resolve_cache_ttl < 0:
            raise SettingError(
                f"SCHEDULER_RESOLVE_CACHE_TTL must not be negative: {self.resolve_cache_ttl}"
            )
        if self.shutdown_grace < 0:
            raise SettingError(
                f"SCHEDULER_SHUTDOWN_GRACE must not be negative: {self.shutdown_grace}"
            )
        if self.default_prompt_cache_mib < 0:
            raise SettingError(
                f"SCHEDULER_PROMPT_CACHE_MIB must not be negative: {self.default_prompt_cache_mib}"
            )
        if self.affinity_max_imbalance < 0:
            raise SettingError(
                "SCHEDULER_AFFINITY_MAX_IMBALANCE must not be negative: "
                f"{self.affinity_max_imbalance}"
            )
        if self.affinity_wait < 0:
            raise SettingError(
                f"SCHEDULER_AFFINITY_WAIT must not be negative: {self.affinity_wait}"
            )
        if self.routing not in POLICY_NAMES:
            raise SettingError(
                f"SCHEDULER_ROUTING must be one of {', '.join(POLICY_NAMES)}, got {self.routing!r}"
            )
        # One late heartbeat must not look like a dead worker.
        if self.worker_timeout <= self.heartbeat_interval:
            raise SettingError(
                "SCHEDULER_WORKER_TIMEOUT must be longer than SCHEDULER_HEARTBEAT_INTERVAL "
                f"({self.worker_timeout}s <= {self.heartbeat_interval}s)"
            )


def _state_path(env: Mapping[str, str]) -> Path | None:
    """SCHEDULER_STATE_PATH; set but empty keeps configurations in memory only."""
    if "SCHEDULER_STATE_PATH" in env and not env["SCHEDULER_STATE_PATH"].strip():
        return None
    return env_path(env, "SCHEDULER_STATE_PATH", _default_state_path())
