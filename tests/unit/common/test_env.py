from __future__ import annotations

import pytest

from services.common.env import (
    SettingError,
    env_bool,
    env_duration,
    env_int,
    env_tags,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("0", 0.0),
        ("-1", -1.0),
        ("-5m", -300.0),
        ("2.5", 2.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m junk", "1h-1m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_typed_readers_report_the_variable() -> None:
    with pytest.raises(SettingError, match="PORT"):
        env_int({"PORT": "abc"}, "PORT", 1)
    with pytest.raises(SettingError, match="KEEP"):
        env_duration({"KEEP": "forever"}, "KEEP", 1.0)
    with pytest.raises(SettingError, match="FLAG"):
        env_bool({"FLAG": "maybe"}, "FLAG", False)
    assert env_int({}, "PORT", 7) == 7
    assert env_bool({"FLAG": "1"}, "FLAG", False) is True


def test_tags() -> None:
    assert env_tags({"T": "gpu=h100, zone=a ,fast"}, "T") == {
        "gpu": "h100",
        "zone": "a",
        "fast": "true",
    }
    assert env_tags({}, "T") == {}
    with pytest.raises(SettingError):
        env_tags({"T": "=x"}, "T")
