"""Registry settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.env import SettingError
from services.registry.config import RegistrySettings


def test_defaults() -> None:
    settings = RegistrySettings.from_env({})
    assert settings.models_path == Path("~/.model-runner/models").expanduser()
    assert settings.listen_address == "127.0.0.1:50051"
    assert settings.shutdown_grace == 5.0
    assert settings.fetch_chunk_bytes == 1 << 20
    assert settings.incomplete_max_age == 7 * 24 * 3600
    assert settings.package_allowed_dirs == ()
    assert settings.max_upload_bytes == 64 << 30
    assert settings.log_level == "INFO"


def test_environment_overrides(tmp_path: Path) -> None:
    settings = RegistrySettings.from_env(
        {
            "MODELS_PATH": str(tmp_path),
            "REGISTRY_LISTEN_ADDRESS": "0.0.0.0:6000",
            "REGISTRY_SHUTDOWN_GRACE": "1m30s",
            "REGISTRY_FETCH_CHUNK_BYTES": "65536",
            "REGISTRY_IO_CHUNK_BYTES": "1024",
            "REGISTRY_MAX_METADATA_BYTES": "2048",
            "REGISTRY_MAX_TEXT_FILE_BYTES": "4096",
            "REGISTRY_INCOMPLETE_MAX_AGE": "24h",
            "REGISTRY_MAX_UPLOAD_BYTES": "1000000",
            "REGISTRY_PACKAGE_ALLOWED_DIRS": f"{tmp_path}/a:{tmp_path}/b",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.models_path == tmp_path
    assert settings.listen_address == "0.0.0.0:6000"
    assert settings.shutdown_grace == 90.0
    assert settings.fetch_chunk_bytes == 65536
    assert settings.io_chunk_bytes == 1024
    assert settings.max_metadata_bytes == 2048
    assert settings.max_text_file_bytes == 4096
    assert settings.incomplete_max_age == 24 * 3600
    assert settings.max_upload_bytes == 1_000_000
    assert settings.package_allowed_dirs == (tmp_path / "a", tmp_path / "b")
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    "env",
    [
        {"REGISTRY_FETCH_CHUNK_BYTES": "0"},
        {"REGISTRY_FETCH_CHUNK_BYTES": str(64 << 20)},
        {"REGISTRY_FETCH_CHUNK_BYTES": "lots"},
        {"REGISTRY_IO_CHUNK_BYTES": "-1"},
        {"REGISTRY_MAX_METADATA_BYTES": "0"},
        {"REGISTRY_MAX_UPLOAD_BYTES": "0"},
        {"REGISTRY_SHUTDOWN_GRACE": "soon"},
        {"REGISTRY_SHUTDOWN_GRACE": "-5s"},
    ],
)
def test_invalid_values_are_rejected(env: dict[str, str]) -> None:
    with pytest.raises(SettingError):
        RegistrySettings.from_env(env)
