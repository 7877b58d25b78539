"""Gateway settings from the environment."""

from __future__ import annotations

import pytest

from services.common.env import SettingError
from services.gateway.config import GatewaySettings


def test_defaults() -> None:
    settings = GatewaySettings.from_env({})

    assert settings.port == 12434
    assert settings.listen_host == "127.0.0.1"
    assert settings.registry_address == "127.0.0.1:50051"
    assert settings.scheduler_address == "127.0.0.1:50052"
    assert settings.request_timeout == 600
    assert settings.assign_timeout == 330
    assert settings.rpc_timeout == 30
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.unavailable_retries == 1
    assert settings.cors_origins == ()
    assert settings.log_level == "INFO"
    assert settings.metrics_enabled is True
    assert settings.metrics_timeout == 10


def test_overrides() -> None:
    settings = GatewaySettings.from_env(
        {
            "MODEL_RUNNER_PORT": "13434",
            "GATEWAY_LISTEN_HOST": "0.0.0.0",
            "REGISTRY_ADDRESS": "registry:50051",
            "SCHEDULER_ADDRESS": "scheduler:50052",
            "GATEWAY_REQUEST_TIMEOUT": "10m",
            "GATEWAY_ASSIGN_TIMEOUT": "90s",
            "GATEWAY_RPC_TIMEOUT": "1500ms",
            "GATEWAY_MAX_BODY_BYTES": "1024",
            "GATEWAY_UNAVAILABLE_RETRIES": "0",
            "GATEWAY_ACCESS_LOG": "false",
            "DMR_ORIGINS": "http://example.com, https://trusted.org ,",
            "LOG_LEVEL": "debug",
        }
    )

    assert settings.port == 13434
    assert settings.listen_host == "0.0.0.0"
    assert settings.registry_address == "registry:50051"
    assert settings.scheduler_address == "scheduler:50052"
    assert settings.request_timeout == 600
    assert settings.assign_timeout == 90
    assert settings.rpc_timeout == 1.5
    assert settings.max_body_bytes == 1024
    assert settings.unavailable_retries == 0
    assert settings.access_log is False
    assert settings.cors_origins == ("http://example.com", "https://trusted.org")
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODEL_RUNNER_PORT", "0"),
        ("MODEL_RUNNER_PORT", "70000"),
        ("MODEL_RUNNER_PORT", "http"),
        ("GATEWAY_REQUEST_TIMEOUT", "0"),
        ("GATEWAY_REQUEST_TIMEOUT", "-1"),
        ("GATEWAY_ASSIGN_TIMEOUT", "soon"),
        ("GATEWAY_MAX_BODY_BYTES", "0"),
        ("GATEWAY_UPLOAD_CHUNK_BYTES", "0"),
        ("GATEWAY_UPLOAD_CHUNK_BYTES", str(64 << 20)),
        ("GATEWAY_UNAVAILABLE_RETRIES", "-1"),
        ("GATEWAY_WORKER_CHANNELS", "0"),
        ("GATEWAY_METRICS_TIMEOUT", "0"),
        ("DISABLE_METRICS", "maybe"),
        ("LOG_LEVEL", "chatty"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingError, match=name):
        GatewaySettings.from_env({name: value})


@pytest.mark.parametrize(
    ("value", "enabled"), [("1", False), ("true", False), ("0", True), ("", True)]
)
def test_disable_metrics(value: str, enabled: bool) -> None:
    settings = GatewaySettings.from_env({"DISABLE_METRICS": value, "GATEWAY_METRICS_TIMEOUT": "2s"})
    assert settings.metrics_enabled is enabled
    assert settings.metrics_timeout == 2


def test_routing_hint_limits() -> None:
    defaults = GatewaySettings.from_env({})
    assert (defaults.prefix_chunk_chars, defaults.max_prefix_hashes) == (256, 32)
    assert defaults.max_affinity_key_chars == 256

    settings = GatewaySettings.from_env(
        {
            "GATEWAY_PREFIX_CHUNK_CHARS": "64",
            "GATEWAY_MAX_PREFIX_HASHES": "0",
            "GATEWAY_MAX_AFFINITY_KEY_CHARS": "128",
        }
    )
    assert (settings.prefix_chunk_chars, settings.max_prefix_hashes) == (64, 0)
    assert settings.max_affinity_key_chars == 128


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PREFIX_CHUNK_CHARS", "0"),
        ("GATEWAY_MAX_PREFIX_HASHES", "-1"),
        ("GATEWAY_MAX_AFFINITY_KEY_CHARS", "16"),
    ],
)
def test_bad_routing_hint_limits_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingError, match=name):
        GatewaySettings.from_env({name: value})
