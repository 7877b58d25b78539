"""Suite-wide guards: no test may leave asyncio tasks or child processes behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tests.support.processes import child_pids


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "replaces_module_process: the test restarts a process a module fixture owns (and stops)",
    )


@pytest.fixture(autouse=True)
def no_leaked_children(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test that leaves a child process running (module/session fixtures excepted)."""
    before = child_pids(os.getpid())
    yield
    if request.node.get_closest_marker("replaces_module_process"):
        return
    leaked = child_pids(os.getpid()) - before
    if leaked:
        pytest.fail(f"test left child processes running: {sorted(leaked)}")


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> Iterator[None]:  # type: ignore[misc]
    """Fails a test that leaves asyncio tasks running on the session loop."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if leaked:
        # Async-generator finalizers (aclose/athrow) are scheduled as tasks when a stream object is
        # dropped; give tasks that are about to finish a moment before calling them leaks.
        await asyncio.wait(leaked, timeout=1.0)
        leaked = [t for t in leaked if not t.done()]
    if leaked:
        names = ", ".join(sorted(t.get_name() + ":" + repr(t.get_coro()) for t in leaked))[:2000]
        pytest.fail(f"test left asyncio tasks running: {names}")
