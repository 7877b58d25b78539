"""`promtool check metrics` on an exposition: Prometheus's own linter (names, units, suffixes,
help text, label syntax). Debian package `prometheus`; the tests skip without it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

__all__ = ["check_metrics"]


def check_metrics(exposition: bytes) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run(
        [tool, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    problems = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0 and not problems.strip(), problems
