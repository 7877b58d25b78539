"""The runtime dir sweep: a dead worker's files go, and so do its orphaned llama-servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.worker.runtime_dir import prepare_runtime_dir
from tests.support.processes import is_alive, wait_for


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_sweeps_files_and_orphans_of_dead_workers(runtime_dir: Path) -> None:
    dead = _dead_pid()
    live = os.getpid()
    (runtime_dir / "logs").mkdir()
    stale_socket = runtime_dir / f"{dead}-abcdef012345-1.sock"
    stale_log = runtime_dir / "logs" / f"{dead}-abcdef012345.log"
    stale_shards = runtime_dir / f"{dead}-abcdef012345-2.shards"
    live_socket = runtime_dir / f"{live}-abcdef012345-1.sock"
    other = runtime_dir / "README"
    for path in (stale_socket, stale_log, live_socket, other):
        path.write_text("")
    stale_shards.mkdir()
    (stale_shards / "model-00001-of-00002.gguf").symlink_to("/nonexistent")
    # Stands in for a llama-server whose worker was SIGKILLed: its socket is on its command line.
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--host", str(stale_socket)]
    )
    cmdline = Path(f"/proc/{orphan.pid}/cmdline")
    try:
        # Right after a vfork+exec the kernel may briefly show an empty command line.
        wait_for(lambda: str(stale_socket).encode() in cmdline.read_bytes(), timeout=5, what="exec")
        prepare_runtime_dir(runtime_dir, own_pid=live)
        wait_for(lambda: orphan.poll() is not None, timeout=5, what="the orphan to be killed")
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()
    assert not is_alive(orphan.pid)
    assert sorted(p.name for p in runtime_dir.iterdir()) == sorted(
        ["logs", live_socket.name, other.name]
    )
    assert list((runtime_dir / "logs").iterdir()) == []


def test_creates_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "rt"
    prepare_runtime_dir(target, own_pid=os.getpid())
    assert (target / "logs").is_dir()
    assert target.stat().st_mode & 0o777 == 0o700
