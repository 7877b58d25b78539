"""Typed readers for environment settings.

Only the services' `config.py` modules call these, once at start-up, with the environment mapping
passed in, so nothing else in the code base reads `os.environ`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "SettingError",
    "env_address",
    "env_bool",
    "env_duration",
    "env_float",
    "env_int",
    "env_path",
    "env_str",
    "env_tags",
    "parse_duration",
    "parse_host_port",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingError(ValueError):
    """An environment variable holds a value of the wrong shape."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingError(f"{name} must be an integer, got {raw!r}") from exc


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingError(f"{name} must be a number, got {raw!r}") from exc


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else default.expanduser()


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration ("5m", "1h30m", "250ms") or a plain number of seconds.

    Negative values mean "never" to the callers that accept them (DMR's keep_alive "-1").
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty duration")
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    try:
        return sign * float(body)
    except ValueError:
        pass
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(body) or position == 0:
        raise ValueError(f"invalid duration {text!r}; use e.g. 30s, 5m, 1h or seconds")
    return sign * total


def env_duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise SettingError(f"{name}: {exc}") from exc


def env_tags(env: Mapping[str, str], name: str) -> dict[str, str]:
    """`key=value,key2=value2` (a bare `key` means `key=true`)."""
    tags: dict[str, str] = {}
    for item in env.get(name, "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key:
            raise SettingError(f"{name}: empty tag name in {item!r}")
        tags[key] = value.strip() if sep else "true"
    return tags


def parse_host_port(text: str) -> tuple[str, int]:
    """("127.0.0.1", 9091) from "127.0.0.1:9091"; "[::1]:9091" for IPv6; port 0 picks a free one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def env_address(env: Mapping[str, str], name: str, default: str) -> str | None:
    """A host:port to listen on; None when the variable is set to "" or "0" (disabled)."""
    if name not in env:
        raw = default
    else:
        raw = env[name].strip()
        if raw in ("", "0"):
            return None
    try:
        parse_host_port(raw)
    except ValueError as exc:
        raise SettingError(f"{name}: {exc}; use host:port, or 0 to disable") from exc
    return raw
