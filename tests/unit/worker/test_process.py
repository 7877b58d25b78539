"""ChildProcess: output capture, the run() contract, SIGTERM then SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from services.worker.errors import RunnerStartError
from services.worker.process import ChildProcess
from tests.support.processes import is_alive
from tests.unit.worker.support import eventually


def _child(tmp_path: Path, code: str, **kwargs: object) -> ChildProcess:
    options: dict[str, object] = {"stop_timeout": 5.0, "log_max_bytes": 1 << 20}
    options.update(kwargs)
    return ChildProcess(
        [sys.executable, "-c", code],
        log_path=tmp_path / "logs" / "child.log",
        **options,  # type: ignore[arg-type]
    )


async def test_run_returns_exit_status_and_captures_output(tmp_path: Path) -> None:
    child = _child(
        tmp_path,
        "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(7)",
    )
    assert await child.run() == 7
    assert "to stdout" in child.tail() and "to stderr" in child.tail()
    assert "to stderr" in (tmp_path / "logs" / "child.log").read_text()


async def test_tail_is_bounded_to_the_last_bytes(tmp_path: Path) -> None:
    child = _child(
        tmp_path, "import sys; sys.stderr.write('a' * 20000 + 'THE END')", tail_bytes=100
    )
    await child.run()
    assert len(child.tail()) == 100
    assert child.tail().endswith("THE END")


async def test_log_file_is_bounded(tmp_path: Path) -> None:
    child = _child(
        tmp_path,
        "import sys\nfor _ in range(50): sys.stderr.write('x' * 1000 + '\\n'); sys.stderr.flush()",
        log_max_bytes=10_000,
    )
    await child.run()
    assert (tmp_path / "logs" / "child.log").stat().st_size <= 10_000 + 100


async def test_cancelling_run_kills_the_child(tmp_path: Path) -> None:
    child = _child(tmp_path, "import time; print('up', flush=True); time.sleep(60)")
    task = asyncio.create_task(child.run())
    await eventually(lambda: "up" in child.tail(), what="the child to start")
    pid = child.pid
    assert pid is not None and is_alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not is_alive(pid)
    assert child.returncode is not None


async def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    child = _child(
        tmp_path,
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)",
        stop_timeout=0.3,
    )
    await child.start()
    await eventually(lambda: "up" in child.tail(), what="the child to start")
    assert await child.stop() == -9


async def test_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    child = ChildProcess(
        [str(tmp_path / "no-such-binary")],
        log_path=tmp_path / "child.log",
        stop_timeout=1.0,
        log_max_bytes=1000,
    )
    with pytest.raises(RunnerStartError, match="cannot execute"):
        await child.run()


_REPO = Path(__file__).resolve().parents[3]
_WORKER_STAND_IN = """
import asyncio, sys
from pathlib import Path
from services.worker.process import ChildProcess

async def main():
    child = ChildProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=Path(sys.argv[1]),
        stop_timeout=1.0,
        log_max_bytes=1000,
    )
    await child.start()
    print(child.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_child_dies_with_a_worker_killed_by_sigkill(tmp_path: Path) -> None:
    """Issue 9's fault suite found llama-servers orphaned by `kill -9` of their worker."""
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WORKER_STAND_IN,
        str(tmp_path / "child.log"),
        stdout=asyncio.subprocess.PIPE,
        cwd=_REPO,
    )
    assert worker.stdout is not None
    line = await asyncio.wait_for(worker.stdout.readline(), 30.0)
    grandchild = int(line)
    try:
        assert is_alive(grandchild)
        worker.kill()
        await worker.wait()
        await eventually(lambda: not is_alive(grandchild), what="the orphan to die")
    finally:
        if is_alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
