"""The Docker plugin invocation rules and the CLI's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_cli.config import DEFAULT_HOST, CliSettings, normalize_host
from model_cli.plugin import Invocation, parse_invocation, plugin_metadata
from services.common.env import SettingError


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/x/model-cli", "ls"], Invocation(["ls"], "model-cli")),
        (["/x/model-cli", "model", "ls"], Invocation(["model", "ls"], "model-cli")),
        (
            ["/home/u/.docker/cli-plugins/docker-model", "model", "ls", "-q"],
            Invocation(["ls", "-q"], "docker model"),
        ),
        (["docker-model", "ls"], Invocation(["ls"], "docker model")),
        (
            ["docker-model", "docker-cli-plugin-metadata"],
            Invocation([], "docker-model", metadata=True),
        ),
        (
            ["model-cli", "docker-cli-plugin-metadata"],
            Invocation([], "docker-model", metadata=True),
        ),
        ([], Invocation([], "model-cli")),
    ],
)
def test_parse_invocation(argv: list[str], expected: Invocation) -> None:
    assert parse_invocation(argv) == expected


def test_metadata() -> None:
    assert plugin_metadata("1.2.3") == {
        "SchemaVersion": "0.1.0",
        "Vendor": "Model Runner",
        "Version": "1.2.3",
        "ShortDescription": "Pull, run and serve AI models with Model Runner",
    }


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("http://localhost:12434/", "http://localhost:12434"),
        ("localhost:13434", "http://localhost:13434"),
        ("tcp://10.0.0.2:12434", "http://10.0.0.2:12434"),
        ("https://runner.example", "https://runner.example"),
    ],
)
def test_hosts(raw: str, url: str) -> None:
    assert normalize_host(raw) == url


@pytest.mark.parametrize("raw", ["ftp://x", "http://", "unix:///var/run/x.sock"])
def test_bad_hosts(raw: str) -> None:
    with pytest.raises(SettingError, match="MODEL_RUNNER_HOST"):
        normalize_host(raw)


def test_defaults_and_overrides() -> None:
    defaults = CliSettings.from_env({})
    assert defaults.host == DEFAULT_HOST
    assert defaults.log_dir == Path("logs")
    assert defaults.runtime_dir.name.startswith("model-runner-")
    settings = CliSettings.from_env(
        {
            "MODEL_RUNNER_HOST": "localhost:1",
            "MODEL_CLI_TIMEOUT": "2m",
            "MODEL_CLI_STREAM_IDLE_TIMEOUT": "10s",
            "MODEL_CLI_PROGRESS_INTERVAL": "0",
            "MODEL_RUNNER_LOG_DIR": "/var/log/mr",
            "WORKER_RUNTIME_DIR": "/run/mr",
        }
    )
    assert (settings.host, settings.request_timeout, settings.stream_idle_timeout) == (
        "http://localhost:1",
        120.0,
        10.0,
    )
    assert settings.progress_interval == 0
    assert (settings.log_dir, settings.runtime_dir) == (Path("/var/log/mr"), Path("/run/mr"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODEL_CLI_TIMEOUT", "0"),
        ("MODEL_CLI_CONNECT_TIMEOUT", "-1s"),
        ("MODEL_CLI_PROGRESS_INTERVAL", "-1"),
        ("MODEL_CLI_UPLOAD_CHUNK_BYTES", "0"),
        ("MODEL_CLI_LOG_POLL_INTERVAL", "soon"),
    ],
)
def test_invalid_settings(name: str, value: str) -> None:
    with pytest.raises(SettingError, match=name):
        CliSettings.from_env({name: value})
