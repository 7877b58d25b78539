"""CLI settings, read once from the environment by `__main__` and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from services.common.env import SettingError, env_duration, env_int, env_path, env_str

__all__ = ["DEFAULT_HOST", "CliSettings", "normalize_host"]

DEFAULT_HOST = "http://localhost:12434"
_MIB = 1024 * 1024


def normalize_host(raw: str) -> str:
    """`localhost:12434`, `tcp://host:port` (Docker's spelling) or a URL -> a base URL."""
    text = raw.strip()
    if text.startswith("tcp://"):
        text = "http://" + text.removeprefix("tcp://")
    elif "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingError(f"MODEL_RUNNER_HOST must be an http(s) URL, got {raw!r}")
    return text.rstrip("/")


def _default_runtime_dir() -> Path:
    # The worker's own default (services/worker/config.py), so `logs` finds llama-server logs.
    return Path("/tmp") / f"model-runner-{os.getuid()}"


@dataclass(frozen=True)
class CliSettings:
    """Every knob of the CLI; durations are seconds."""

    host: str = DEFAULT_HOST
    # MODEL_RUNNER_API_KEY: sent as `Authorization: Bearer` when the gateway requires keys. Kept
    # out of repr so that printing the settings never shows it.
    api_key: str = field(default="", repr=False)
    # Opening a connection to the gateway.
    connect_timeout: float = 5.0
    # Any silence while waiting on a short API call (list, inspect, tag, ps, ...).
    request_timeout: float = 60.0
    # Longest silence inside a streamed answer or transfer. Covers a cold model load before the
    # first token (the gateway's own assign limit is 330s) and the registry's retries mid-pull.
    stream_idle_timeout: float = 360.0
    # `verify`: the gateway answers once the registry has re-hashed the whole store.
    verify_timeout: float = 3600.0
    # Plain (non-terminal) progress: at most one line per layer per interval, plus layer ends.
    progress_interval: float = 1.0
    # `logs -f`: how often the log files are checked for new lines.
    log_poll_interval: float = 0.25
    # `package`: size of each read of the GGUF sent as the request body.
    upload_chunk_bytes: int = _MIB
    # Where `make run` writes each service's log (shared with the stack launcher).
    log_dir: Path = Path("logs")
    # The worker's runtime directory; llama-server logs are under its `logs/`.
    runtime_dir: Path = Path("/tmp/model-runner")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CliSettings:
        settings = cls(
            host=normalize_host(env_str(env, "MODEL_RUNNER_HOST", DEFAULT_HOST)),
            api_key=env_str(env, "MODEL_RUNNER_API_KEY", "").strip(),
            connect_timeout=env_duration(env, "MODEL_CLI_CONNECT_TIMEOUT", cls.connect_timeout),
            request_timeout=env_duration(env, "MODEL_CLI_TIMEOUT", cls.request_timeout),
            stream_idle_timeout=env_duration(
                env, "MODEL_CLI_STREAM_IDLE_TIMEOUT", cls.stream_idle_timeout
            ),
            verify_timeout=env_duration(env, "MODEL_CLI_VERIFY_TIMEOUT", cls.verify_timeout),
            progress_interval=env_duration(
                env, "MODEL_CLI_PROGRESS_INTERVAL", cls.progress_interval
            ),
            log_poll_interval=env_duration(
                env, "MODEL_CLI_LOG_POLL_INTERVAL", cls.log_poll_interval
            ),
            upload_chunk_bytes=env_int(env, "MODEL_CLI_UPLOAD_CHUNK_BYTES", cls.upload_chunk_bytes),
            log_dir=env_path(env, "MODEL_RUNNER_LOG_DIR", cls.log_dir),
            runtime_dir=env_path(env, "WORKER_RUNTIME_DIR", _default_runtime_dir()),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = {
            "MODEL_CLI_CONNECT_TIMEOUT": self.connect_timeout,
            "MODEL_CLI_TIMEOUT": self.request_timeout,
            "MODEL_CLI_STREAM_IDLE_TIMEOUT": self.stream_idle_timeout,
            "MODEL_CLI_VERIFY_TIMEOUT": self.verify_timeout,
            "MODEL_CLI_LOG_POLL_INTERVAL": self.log_poll_interval,
            "MODEL_CLI_UPLOAD_CHUNK_BYTES": self.upload_chunk_bytes,
        }
        for name, value in positive.items():
            if value <= 0:
                raise SettingError(f"{name} must be positive, got {value}")
        if self.progress_interval < 0:
            raise SettingError("MODEL_CLI_PROGRESS_INTERVAL must not be negative")
