"""WorkerSettings.from_env: defaults, parsing and refusals."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.common.env import SettingError
from services.worker.config import WorkerSettings


def test_defaults() -> None:
    settings = WorkerSettings.from_env({})
    assert settings.listen_address == "127.0.0.1:50053"
    assert settings.registry_address == "127.0.0.1:50051"
    assert settings.scheduler_address == "127.0.0.1:50052"
    assert settings.ready_timeout == 300
    assert settings.stop_timeout == 10
    assert settings.stream_idle_timeout == 120
    assert settings.max_runners == 4
    assert settings.cache_max_bytes == 100 * 1024**3
    assert settings.llama_server_path is None
    assert settings.llama_args == ()
    assert settings.cache_path == Path("~/.model-runner/worker-cache").expanduser()
    assert str(settings.runtime_dir).startswith("/tmp/")
    assert settings.metrics_timeout == 5
    assert settings.metrics_max_bytes == 1024 * 1024


def test_parses_values() -> None:
    settings = WorkerSettings.from_env(
        {
            "WORKER_TAGS": "gpu=h100, zone=a",
            "LLAMA_ARGS": "--threads 2 --temp '0.5'",
            "WORKER_READY_TIMEOUT": "1m30s",
            "WORKER_STOP_TIMEOUT": "250ms",
            "WORKER_MAX_RUNNERS": "2",
            "WORKER_MEMORY_BYTES": "1000",
            "WORKER_CACHE_MAX_BYTES": "0",
            "LLAMA_SERVER_PATH": "/opt/llama-server",
            "WORKER_METRICS_TIMEOUT": "1500ms",
            "WORKER_METRICS_MAX_BYTES": "4096",
        }
    )
    assert settings.tags == {"gpu": "h100", "zone": "a"}
    assert settings.llama_args == ("--threads", "2", "--temp", "0.5")
    assert settings.ready_timeout == 90
    assert settings.stop_timeout == 0.25
    assert settings.max_runners == 2
    assert settings.memory_bytes == 1000
    assert settings.cache_max_bytes == 0
    assert settings.llama_server_path == Path("/opt/llama-server")
    assert settings.metrics_timeout == 1.5
    assert settings.metrics_max_bytes == 4096


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLAMA_ARGS": "--port 9000"}, "may not set --port"),
        ({"LLAMA_ARGS": "--model=/x.gguf"}, "may not set --model"),
        ({"LLAMA_ARGS": "--threads 'unclosed"}, "LLAMA_ARGS"),
        ({"WORKER_RUNTIME_DIR": "/tmp/" + "x" * 80}, "107-byte"),
        ({"WORKER_MAX_RUNNERS": "0"}, "WORKER_MAX_RUNNERS must be positive"),
        ({"WORKER_READY_TIMEOUT": "-1"}, "WORKER_READY_TIMEOUT must be positive"),
        ({"WORKER_LISTEN_ADDRESS": "nohost"}, "host:port"),
        ({"WORKER_MEMORY_BYTES": "-5"}, "WORKER_MEMORY_BYTES"),
        ({"WORKER_CACHE_MAX_BYTES": "-1"}, "WORKER_CACHE_MAX_BYTES"),
        ({"WORKER_METRICS_TIMEOUT": "0"}, "WORKER_METRICS_TIMEOUT must be positive"),
        ({"WORKER_METRICS_MAX_BYTES": "0"}, "WORKER_METRICS_MAX_BYTES must be positive"),
    ],
)
def test_refuses(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError, match=message):
        WorkerSettings.from_env(env)


def test_identity_defaults_to_hostname_and_bound_port() -> None:
    settings = WorkerSettings.from_env({"WORKER_LISTEN_ADDRESS": "127.0.0.1:0"})
    assert settings.identity(41234) == (f"{socket.gethostname()}-41234", "127.0.0.1:41234")


def test_identity_wildcard_host_is_advertised_as_hostname() -> None:
    settings = WorkerSettings.from_env({"WORKER_LISTEN_ADDRESS": "0.0.0.0:50053"})
    assert settings.identity(50053)[1] == f"{socket.gethostname()}:50053"


def test_identity_explicit_values_win() -> None:
    settings = WorkerSettings.from_env(
        {"WORKER_ID": "w1", "WORKER_ADVERTISE_ADDRESS": "worker-1:7000"}
    )
    assert settings.identity(50053) == ("w1", "worker-1:7000")


def test_engine_defaults_to_llama_cpp_with_the_hosts_memory() -> None:
    settings = WorkerSettings.from_env({})
    assert settings.engine == "llama.cpp"
    assert settings.memory_bytes == 0  # detected from /proc/meminfo
    assert (settings.sim_load_time, settings.sim_tokens_per_second) == (1.0, 50.0)
    assert (settings.sim_prompt_tokens_per_second, settings.sim_max_tokens) == (1000.0, 16)
    assert settings.sim_parallel == 4


def test_simulated_engine_settings() -> None:
    settings = WorkerSettings.from_env(
        {
            "WORKER_ENGINE": "simulated",
            "WORKER_SIM_LOAD_TIME": "250ms",
            "WORKER_SIM_TOKENS_PER_SECOND": "20.5",
            "WORKER_SIM_PROMPT_TOKENS_PER_SECOND": "400",
            "WORKER_SIM_MAX_TOKENS": "8",
            "WORKER_SIM_PARALLEL": "2",
        }
    )
    assert settings.engine == "simulated"
    # A simulated worker never reports the host's memory.
    assert settings.memory_bytes == 16 * 1024**3
    assert settings.sim_load_time == 0.25
    assert settings.sim_tokens_per_second == 20.5
    assert settings.sim_prompt_tokens_per_second == 400
    assert (settings.sim_max_tokens, settings.sim_parallel) == (8, 2)
    explicit = WorkerSettings.from_env({"WORKER_ENGINE": "simulated", "WORKER_MEMORY_BYTES": "5"})
    assert explicit.memory_bytes == 5
    instant = WorkerSettings.from_env({"WORKER_ENGINE": "simulated", "WORKER_SIM_LOAD_TIME": "0"})
    assert instant.sim_load_time == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKER_ENGINE": "vllm"}, "WORKER_ENGINE must be one of llama.cpp, simulated"),
        ({"WORKER_SIM_TOKENS_PER_SECOND": "0"}, "WORKER_SIM_TOKENS_PER_SECOND must be positive"),
        ({"WORKER_SIM_PROMPT_TOKENS_PER_SECOND": "x"}, "must be a number"),
        ({"WORKER_SIM_LOAD_TIME": "-1s"}, "WORKER_SIM_LOAD_TIME must be >= 0"),
        ({"WORKER_SIM_MAX_TOKENS": "0"}, "WORKER_SIM_MAX_TOKENS must be positive"),
        ({"WORKER_SIM_PARALLEL": "-2"}, "WORKER_SIM_PARALLEL must be positive"),
        ({"LLAMA_ARGS": "--ctx-size 4096"}, "may not set --ctx-size"),
        ({"LLAMA_ARGS": "-np 2"}, "may not set -np"),
        ({"LLAMA_ARGS": "--parallel=2"}, "may not set --parallel"),
    ],
)
def test_refuses_engine_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError, match=message):
        WorkerSettings.from_env(env)
