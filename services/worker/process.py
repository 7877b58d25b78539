"""One child process (llama-server): spawn, capture its output, stop it for sure.

The contract follows DMR's `Backend.Run`: `run()` returns only when the child has exited or the
call was cancelled, never restarts it, and the child is dead (and reaped) when it returns either
way. Restart policy belongs to the pool.

The child gets its own session, so a Ctrl-C aimed at the worker's terminal does not kill runners
behind the worker's back; the worker stops them itself (SIGTERM, wait, SIGKILL to the group).
A worker killed with SIGKILL cannot stop them, so on Linux the child is started through
util-linux's `setpriv --pdeathsig KILL`, which asks the kernel to SIGKILL it when the worker dies
and then execs it (same pid): no llama-server outlives its worker. A Python preexec_fn would do
the same without the extra exec, but running Python in a child forked from a process with gRPC
threads crashed the child now and then (SIGSEGV before exec).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from services.worker.errors import RunnerStartError

__all__ = ["ChildProcess"]

_log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
# A grandchild could hold the output pipe open after the child exits; do not wait on it forever.
_OUTPUT_DRAIN_TIMEOUT = 2.0
# util-linux is essential on Debian and Ubuntu; elsewhere the runtime directory's orphan sweep
# (runtime_dir.py) is what remains.
_SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")


def _dying_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped so that the kernel SIGKILLs the child when the worker dies."""
    # A binary that cannot run must still fail the spawn itself (RunnerStartError), not setpriv.
    if not sys.platform.startswith("linux") or not os.access(argv[0], os.X_OK):
        return list(argv)
    for setpriv in _SETPRIV_PATHS:
        if os.access(setpriv, os.X_OK):
            return [setpriv, "--pdeathsig", "KILL", "--", *argv]
    return list(argv)


class ChildProcess:
    """A child started once; its output goes to `log_path` and a bounded in-memory tail."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        stop_timeout: float,
        log_max_bytes: int,
        tail_bytes: int = 4096,
    ) -> None:
        self._argv = list(argv)
        self._log_path = log_path
        self._stop_timeout = stop_timeout
        self._log_max_bytes = log_max_bytes
        self._tail_bytes = tail_bytes
        self._tail = bytearray()
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._log: BinaryIO | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def tail(self) -> str:
        """The last few KiB the child printed (stdout and stderr interleaved)."""
        return self._tail.decode("utf-8", errors="replace")

    async def start(self) -> None:
        """Spawn the child; RunnerStartError when the binary cannot be executed at all."""
        if self._proc is not None:
            raise RuntimeError("a ChildProcess is started once")
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self._log_path.open("wb")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *_dying_with_parent(self._argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise RunnerStartError(f"cannot execute {self._argv[0]}: {exc}") from exc
        assert self._proc.stdout is not None
        self._pump = asyncio.create_task(
            self._copy_output(self._proc.stdout), name=f"child-output-{self._proc.pid}"
        )
        _log.debug("started pid %d: %s", self._proc.pid, " ".join(self._argv))

    async def wait(self) -> int:
        """Wait for the child to exit and its output to be captured; returns the exit status."""
        if self._proc is None:
            raise RuntimeError("the child was never started")
        returncode = await self._proc.wait()
        await self._finish_output()
        return returncode

    async def run(self) -> int:
        """Start (if needed) and wait; the child is dead when this returns or raises."""
        if self._proc is None:
            await self.start()
        try:
            return await self.wait()
        finally:
            if self.running:
                await self.stop()

    async def stop(self) -> int | None:
        """SIGTERM, wait up to stop_timeout, then SIGKILL; returns the exit status."""
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), self._stop_timeout)
            except TimeoutError:
                _log.warning(
                    "pid %d ignored SIGTERM for %.1fs; killing it",
                    self._proc.pid,
                    self._stop_timeout,
                )
                self._signal(signal.SIGKILL)
            except BaseException:
                # Cancelled while waiting: never leave the child behind.
                self._signal(signal.SIGKILL)
                raise
        return await self.wait()

    def _signal(self, signum: signal.Signals) -> None:
        assert self._proc is not None
        if self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # The child leads its own process group: reach anything it forked too.
            os.killpg(self._proc.pid, signum)

    async def _copy_output(self, stream: asyncio.StreamReader) -> None:
        written = 0
        while chunk := await stream.read(_READ_CHUNK):
            self._tail += chunk
            if len(self._tail) > self._tail_bytes:
                del self._tail[: len(self._tail) - self._tail_bytes]
            if self._log is None:
                continue
            # Page-cache writes of log lines are microseconds; a thread hop per line would cost more.
            if written + len(chunk) > self._log_max_bytes:
                self._log.seek(0)
                self._log.truncate()
                self._log.write(b"[log truncated: over WORKER_RUNNER_LOG_MAX_BYTES]\n")
                written = 0
                chunk = chunk[-self._log_max_bytes :]
            self._log.write(chunk)
            self._log.flush()
            written += len(chunk)

    async def _finish_output(self) -> None:
        if self._pump is not None:
            _, pending = await asyncio.wait({self._pump}, timeout=_OUTPUT_DRAIN_TIMEOUT)
            if pending:
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pump
            elif not self._pump.cancelled() and self._pump.exception() is not None:
                _log.warning("capturing child output failed: %s", self._pump.exception())
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
