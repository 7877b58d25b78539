"""What this machine offers: its accelerator kind and its memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MemoryGauge", "MemoryInfo", "detect_accelerator", "read_meminfo"]

_log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 10.0


async def _gpu_lines(command: list[str]) -> list[str]:
    """Output lines of a GPU listing tool, [] when it is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return []
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return []
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), _PROBE_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        _log.warning("%s did not answer within %.0fs", command[0], _PROBE_TIMEOUT)
        return []
    if process.returncode != 0:
        return []
    return [line for line in stdout.decode(errors="replace").splitlines() if line.strip()]


async def detect_accelerator() -> tuple[str, int]:
    """("nvidia" | "rocm" | "cpu", number of GPUs)."""
    nvidia = [line for line in await _gpu_lines(["nvidia-smi", "-L"]) if line.startswith("GPU ")]
    if nvidia:
        return "nvidia", len(nvidia)
    rocm = [line for line in await _gpu_lines(["rocm-smi", "--showid"]) if "GPU[" in line]
    if rocm:
        return "rocm", len({line.split("]")[0] for line in rocm})
    return "cpu", 0


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int
    available_bytes: int


def read_meminfo(path: Path = Path("/proc/meminfo")) -> MemoryInfo:
    """MemTotal and MemAvailable; zeros where the file is missing (not Linux)."""
    values: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return MemoryInfo(0, 0)
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            values[name] = int(parts[0]) * scale
    total = values.get("MemTotal", 0)
    return MemoryInfo(total, values.get("MemAvailable", values.get("MemFree", 0)))


class MemoryGauge:
    """Memory to report to the scheduler.

    With WORKER_MEMORY_BYTES set, the worker owns that budget and "free" is what its loaded
    models leave of it; otherwise both figures come from /proc/meminfo.
    """

    def __init__(
        self,
        override_bytes: int,
        loaded_bytes: Callable[[], int],
        meminfo: Callable[[], MemoryInfo] = read_meminfo,
    ) -> None:
        self._override = override_bytes
        self._loaded = loaded_bytes
        self._meminfo = meminfo

    def total(self) -> int:
        return self._override or self._meminfo().total_bytes

    def free(self) -> int:
        if self._override:
            return max(0, self._override - self._loaded())
        return self._meminfo().available_bytes
