"""Drive `model-cli` the way a person at a terminal does: on a pseudo-terminal (stdlib `pty`)
that is the child's controlling terminal, so Ctrl-C typed as \\x03 reaches it as SIGINT."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ANSI", "Terminal", "strip_ansi"]

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
ROWS, COLUMNS = 40, 120
# Run in the child, between fork and exec of the CLI: a new session whose controlling terminal is
# the pty on fd 0 (Popen's start_new_session does the setsid).
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class Terminal:
    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> None:
        self._master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color"},
            cwd=cwd,
            start_new_session=True,
        )
        os.close(slave)
        self.output = ""

    def _read(self, timeout: float) -> bool:
        """Appends what arrives within `timeout`; False when the terminal closed."""
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self._master, 65536)
        except OSError:
            return False
        if not data:
            return False
        self.output += data.decode("utf-8", errors="replace")
        return True

    def expect(self, pattern: str, *, timeout: float = 60.0, since: int = 0) -> re.Match[str]:
        """Wait until `pattern` (a regex) appears in the ANSI-free output after `since` chars."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(strip_ansi(self.output), since)
            if match:
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(min(remaining, 0.2)):
                if match := re.compile(pattern).search(strip_ansi(self.output), since):
                    return match
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"{pattern!r} not seen; output so far:\n{strip_ansi(self.output)[-3000:]}"
                    )

    def mark(self) -> int:
        """A position in the ANSI-free output, for `expect(since=...)`."""
        return len(strip_ansi(self.output))

    def send(self, text: str) -> None:
        os.write(self._master, text.encode())

    def interrupt_until(self, pattern: str, *, since: int, attempts: int = 5) -> re.Match[str]:
        """Ctrl-C until `pattern` shows. At a readline prompt one press can be missed: a SIGINT
        that lands after the prompt is drawn but before readline waits for a key is only acted
        on at the next interruption (CPython's readline loop checks signals on EINTR)."""
        for attempt in range(attempts):
            self.send("\x03")
            try:
                return self.expect(pattern, since=since, timeout=2.0)
            except AssertionError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def wait(self, timeout: float = 30.0) -> int:
        """Exit code, reading the rest of the output so the child never blocks on a full pty."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if not self._read(0.1):
                break
        code = self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        while self._read(0):
            pass
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
