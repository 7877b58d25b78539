"""`logs` reads the stack's own log files: merged history, one service, the last lines, and
following new lines until Ctrl-C."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from services.stack.launcher import LocalStack
from tests.integration.cli.conftest import Cli

pytestmark = pytest.mark.integration

_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) ")


def test_history_is_merged_in_time_order(cli: Cli) -> None:
    lines = cli.ok("logs", "--no-engines").splitlines()
    services = {line.split()[3] for line in lines if _STAMP.match(line)}
    assert {"registry", "scheduler", "worker", "gateway"} <= services
    stamps = [m.group(1) for m in map(_STAMP.match, lines) if m]
    assert stamps == sorted(stamps)


def test_one_service_and_tail(cli: Cli, cli_stack: LocalStack) -> None:
    marker = f"/models/cli-logs-{uuid.uuid4().hex[:8]}"
    httpx.get(cli_stack.gateway_url + marker, timeout=30)
    gateway = cli.ok("logs", "--service", "gateway").splitlines()
    assert all(" gateway " in line for line in gateway if _STAMP.match(line))
    assert any(marker in line for line in gateway)
    last = cli.ok("logs", "--service", "gateway", "--tail", "3").splitlines()
    assert last == gateway[-3:]


def test_follow_prints_new_lines_until_ctrl_c(cli: Cli, cli_stack: LocalStack) -> None:
    with cli.terminal("logs", "-f", "--service", "gateway", "--tail", "1") as term:
        history = term.expect(r"gateway .*\n")
        marker = f"/models/cli-follow-{uuid.uuid4().hex[:8]}"
        httpx.get(cli_stack.gateway_url + marker, timeout=30)
        term.expect(re.escape(marker), since=history.end(), timeout=30)
        term.send("\x03")
        assert term.wait() == 0
    assert "Traceback" not in term.output
