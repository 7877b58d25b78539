"""Accelerator detection (with stand-in GPU tools on PATH) and memory figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.worker.hardware import MemoryGauge, MemoryInfo, detect_accelerator, read_meminfo


def _tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


async def test_nvidia_gpus_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tool(
        tmp_path,
        "nvidia-smi",
        'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"; echo "GPU 1: NVIDIA H100 (UUID: GPU-2)"',
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    assert await detect_accelerator() == ("nvidia", 2)


async def test_nvidia_smi_without_gpus_means_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tool(tmp_path, "nvidia-smi", 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert await detect_accelerator() == ("cpu", 0)


async def test_rocm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tool(tmp_path, "rocm-smi", 'echo "GPU[0]		: Device ID: 0x73bf"')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert await detect_accelerator() == ("rocm", 1)


async def test_no_tools_means_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert await detect_accelerator() == ("cpu", 0)


def test_read_meminfo(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       16000 kB\nMemFree:  1000 kB\nMemAvailable:   8000 kB\n")
    assert read_meminfo(path) == MemoryInfo(16000 * 1024, 8000 * 1024)
    assert read_meminfo(tmp_path / "missing") == MemoryInfo(0, 0)


def test_memory_gauge_override_subtracts_loaded_models() -> None:
    loaded = [300]
    gauge = MemoryGauge(1000, lambda: loaded[0], meminfo=lambda: MemoryInfo(99, 98))
    assert (gauge.total(), gauge.free()) == (1000, 700)
    loaded[0] = 5000
    assert gauge.free() == 0


def test_memory_gauge_detected() -> None:
    gauge = MemoryGauge(0, lambda: 300, meminfo=lambda: MemoryInfo(99, 98))
    assert (gauge.total(), gauge.free()) == (99, 98)
