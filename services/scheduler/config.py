"""Scheduler settings, read once from the environment in `__main__`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.env import SettingError, env_duration, env_int, env_str

__all__ = ["SchedulerSettings"]

_DEFAULT_KEEP_ALIVE = 300.0
_DEFAULT_HEARTBEAT_INTERVAL = 2.0
_MISSED_HEARTBEATS = 3


@dataclass(frozen=True)
class SchedulerSettings:
    listen_address: str = "127.0.0.1:50052"
    registry_address: str = "127.0.0.1:50051"
    # Seconds an idle runner stays loaded; None means never unload (MODEL_KEEP_ALIVE=-1).
    keep_alive: float | None = _DEFAULT_KEEP_ALIVE
    heartbeat_interval: float = _DEFAULT_HEARTBEAT_INTERVAL
    worker_timeout: float = _DEFAULT_HEARTBEAT_INTERVAL * _MISSED_HEARTBEATS
    load_timeout: float = 300.0
    lease_timeout: float = 900.0
    max_waiting_per_model: int = 64
    max_leases: int = 65_536
    rpc_timeout: float = 10.0
    # 0 disables the cache: every Assign asks the registry.
    resolve_cache_ttl: float = 2.0
    resolve_cache_entries: int = 1024
    shutdown_grace: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SchedulerSettings:
        keep_alive = env_duration(env, "MODEL_KEEP_ALIVE", _DEFAULT_KEEP_ALIVE)
        interval = env_duration(env, "SCHEDULER_HEARTBEAT_INTERVAL", _DEFAULT_HEARTBEAT_INTERVAL)
        settings = cls(
            listen_address=env_str(env, "SCHEDULER_LISTEN_ADDRESS", cls.listen_address),
            registry_address=env_str(env, "REGISTRY_ADDRESS", cls.registry_address),
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
            rpc_timeout=env_duration(env, "SCHEDULER_RPC_TIMEOUT", cls.rpc_timeout),
            resolve_cache_ttl=env_duration(
                env, "SCHEDULER_RESOLVE_CACHE_TTL", cls.resolve_cache_ttl
            ),
            resolve_cache_entries=env_int(
                env, "SCHEDULER_RESOLVE_CACHE_ENTRIES", cls.resolve_cache_entries
            ),
            shutdown_grace=env_duration(env, "SCHEDULER_SHUTDOWN_GRACE", cls.shutdown_grace),
            log_level=env_str(env, "LOG_LEVEL", cls.log_level),
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
            "SCHEDULER_RESOLVE_CACHE_ENTRIES": self.resolve_cache_entries,
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
        # One late heartbeat must not look like a dead worker.
        if self.worker_timeout <= self.heartbeat_interval:
            raise SettingError(
                "SCHEDULER_WORKER_TIMEOUT must be longer than SCHEDULER_HEARTBEAT_INTERVAL "
                f"({self.worker_timeout}s <= {self.heartbeat_interval}s)"
            )
