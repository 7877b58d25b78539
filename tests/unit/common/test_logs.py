"""Log lines: one JSON object per line (or the human text format), with the request id."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable

import pytest

from services.common.env import SettingError
from services.common.logs import LogFormat, log_handler, parse_log_format
from services.common.request_id import request_id_scope

Emit = Callable[[LogFormat], list[str]]


@pytest.fixture
def emit() -> Callable[..., list[str]]:
    """Log a fixed set of records through a handler of the given format; returns its lines."""

    def run(log_format: LogFormat) -> list[str]:
        stream = io.StringIO()
        handler = log_handler("scheduler", log_format, stream)
        logger = logging.getLogger("tests.logs")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            logger.info("plain %s", "line")
            with request_id_scope("req-9"):
                logger.warning('quote " and\nnewline')
                try:
                    raise ValueError("boom")
                except ValueError:
                    logger.exception("failed")
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
        return stream.getvalue().splitlines()

    return run


def test_json_lines(emit: Emit) -> None:
    lines = emit("json")
    # A message with a newline and a traceback still make one line per record.
    assert len(lines) == 3
    plain, quoted, failed = (json.loads(line) for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", plain["ts"])
    assert plain == {
        "ts": plain["ts"],
        "level": "INFO",
        "service": "scheduler",
        "logger": "tests.logs",
        "message": "plain line",
    }
    assert quoted["message"] == 'quote " and\nnewline'
    assert (quoted["level"], quoted["request_id"]) == ("WARNING", "req-9")
    assert failed["request_id"] == "req-9"
    assert failed["exc"].startswith("Traceback") and "ValueError: boom" in failed["exc"]


def test_text_lines_keep_the_format_model_cli_logs_reads(emit: Emit) -> None:
    lines = emit("text")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r" INFO scheduler tests\.logs: plain line", lines[0])
    assert lines[2] == "newline request_id=req-9"
    assert re.fullmatch(stamp + r" ERROR scheduler tests\.logs: failed request_id=req-9", lines[3])
    assert lines[4] == "Traceback (most recent call last):"


@pytest.mark.parametrize(
    ("raw", "expected"), [("json", "json"), ("TEXT", "text"), (" json ", "json")]
)
def test_parse_log_format(raw: str, expected: str) -> None:
    assert parse_log_format(raw) == expected


def test_parse_log_format_rejects_others() -> None:
    with pytest.raises(SettingError, match="LOG_FORMAT must be one of json, text"):
        parse_log_format("yaml")
