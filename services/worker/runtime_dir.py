"""The worker's runtime directory: llama-server sockets, per-runner logs, shard links.

Files are named `<worker pid>-...`, so workers sharing the directory never collide, and files of
a worker that is gone can be recognised. A worker killed with SIGKILL cannot stop its runners
(they live in their own sessions); the next worker started on this directory finds them by their
socket path on the command line, kills them, and removes the dead worker's files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

__all__ = ["prepare_runtime_dir"]

_log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str) -> int | None:
    head, sep, _ = name.partition("-")
    return int(head) if sep and head.isdigit() else None


def _kill_orphans(runtime_dir: Path, dead_pids: set[int]) -> None:
    markers = [f"{runtime_dir}/{pid}-".encode() for pid in dead_pids]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(marker in cmdline for marker in markers):
            _log.warning("killing orphaned llama-server pid %s of a dead worker", entry.name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def prepare_runtime_dir(runtime_dir: Path, own_pid: int) -> None:
    """Create the directory and clean up after workers that died without stopping runners."""
    (runtime_dir / "logs").mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        runtime_dir.chmod(0o700)
    entries = [*runtime_dir.iterdir(), *(runtime_dir / "logs").iterdir()]
    dead = {
        pid
        for entry in entries
        if (pid := _owner_pid(entry.name)) is not None and pid != own_pid and not _pid_alive(pid)
    }
    if not dead:
        return
    _kill_orphans(runtime_dir, dead)
    for entry in entries:
        if _owner_pid(entry.name) in dead:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
