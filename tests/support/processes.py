"""Process and port helpers shared by the tests: free ports, readiness polling, PID-based teardown."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.common.health_client import wait_until_serving

__all__ = [
    "child_pids",
    "free_port",
    "is_alive",
    "stop_process",
    "wait_for",
    "wait_grpc_healthy",
    "wait_grpc_healthy_sync",
    "wait_until",
]


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (bind to 0, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `predicate` until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, what: str, timeout: float = 10.0
) -> None:
    """Async polling: until `predicate` (sync or async) is true; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_grpc_healthy(address: str, *, timeout: float = 30.0, service: str = "") -> None:
    """Poll the gRPC health service until it answers SERVING."""
    await wait_until_serving(address, timeout=timeout, service=service)


def wait_grpc_healthy_sync(address: str, *, timeout: float = 30.0) -> None:
    asyncio.run(wait_grpc_healthy(address, timeout=timeout))


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: the process is gone when this returns."""
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def child_pids(pid: int) -> set[int]:
    """Live direct children of `pid` (from /proc, all threads)."""
    children: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return children
    for task in tasks:
        try:
            children.update(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return {child for child in children if is_alive(child)}
