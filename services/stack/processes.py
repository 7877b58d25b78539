"""One child service process: started with its own log file, stopped by PID (TERM, then KILL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServiceProcess"]

_LOG_TAIL_BYTES = 4096


@dataclass
class ServiceProcess:
    """A service run as `python -m <module>` with `env`, logging to `log_path`."""

    name: str
    module: str
    env: Mapping[str, str]
    log_path: Path
    _process: asyncio.subprocess.Process | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                env=dict(self.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def exit_reason(self) -> str | None:
        """None while running; otherwise how it ended and the end of its log."""
        if self._process is None or self._process.returncode is None:
            return None
        return f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}"

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    async def wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns once the process is gone."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
