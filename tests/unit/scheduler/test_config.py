from __future__ import annotations

import pytest

from services.common.env import SettingError
from services.scheduler.config import SchedulerSettings


def test_defaults() -> None:
    settings = SchedulerSettings.from_env({})
    assert settings.listen_address == "127.0.0.1:50052"
    assert settings.registry_address == "127.0.0.1:50051"
    assert settings.keep_alive == 300.0
    assert settings.heartbeat_interval == 2.0
    assert settings.worker_timeout == 6.0
    assert settings.load_timeout == 300.0
    assert settings.lease_timeout == 900.0
    assert settings.max_waiting_per_model == 256
    assert settings.default_parallel == 4
    assert settings.default_context_size == 4096
    assert settings.default_max_replicas == 1
    assert settings.routing == "affinity"
    assert settings.state_path is not None
    assert settings.state_path.name == "model-configs.json"


def test_empty_state_path_keeps_configurations_in_memory() -> None:
    assert SchedulerSettings.from_env({"SCHEDULER_STATE_PATH": ""}).state_path is None


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("5m", 300.0), ("0", 0.0), ("-1", None), ("-5m", None), ("90", 90.0), ("1h30m", 5400.0)],
)
def test_keep_alive(raw: str, seconds: float | None) -> None:
    assert SchedulerSettings.from_env({"MODEL_KEEP_ALIVE": raw}).keep_alive == seconds


def test_worker_timeout_follows_the_heartbeat_interval() -> None:
    settings = SchedulerSettings.from_env({"SCHEDULER_HEARTBEAT_INTERVAL": "500ms"})
    assert (settings.heartbeat_interval, settings.worker_timeout) == (0.5, 1.5)
    settings = SchedulerSettings.from_env(
        {"SCHEDULER_HEARTBEAT_INTERVAL": "1s", "SCHEDULER_WORKER_TIMEOUT": "10s"}
    )
    assert settings.worker_timeout == 10.0


@pytest.mark.parametrize(
    "env",
    [
        {"MODEL_KEEP_ALIVE": "soon"},
        {"SCHEDULER_HEARTBEAT_INTERVAL": "0"},
        {"SCHEDULER_HEARTBEAT_INTERVAL": "2s", "SCHEDULER_WORKER_TIMEOUT": "1s"},
        {"SCHEDULER_MAX_WAITING_PER_MODEL": "0"},
        {"SCHEDULER_MAX_WAITING_PER_MODEL": "many"},
        {"SCHEDULER_LOAD_TIMEOUT": "-1"},
        {"SCHEDULER_SHUTDOWN_GRACE": "-1"},
        {"SCHEDULER_ROUTING": "random"},
        {"SCHEDULER_DEFAULT_PARALLEL": "0"},
        {"SCHEDULER_AFFINITY_MAX_IMBALANCE": "-1"},
        {"SCHEDULER_AFFINITY_WAIT": "-1"},
        {"SCHEDULER_AFFINITY_WAIT": "a while"},
        {"SCHEDULER_QUEUE_TIMEOUT": "0"},
    ],
)
def test_invalid_settings_are_rejected(env: dict[str, str]) -> None:
    with pytest.raises(SettingError):
        SchedulerSettings.from_env(env)
