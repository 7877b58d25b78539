"""RunnerPool with the stand-in llama-server as a real subprocess: loads, leases, unloads, faults."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from services.worker.artifact import CHAT_TEMPLATE_MEDIA_TYPE, LICENSE_MEDIA_TYPE, ModelSpec
from services.worker.engine import LoadOptions
from services.worker.errors import (
    CapacityError,
    InvalidModelError,
    ModelLoadError,
    ModelNotReadyError,
    RunnerStoppedError,
    RunnerTimeoutError,
)
from services.worker.pool import RunnerPool
from services.worker.runner import RunnerSnapshot, RunnerState
from tests.support.processes import is_alive
from tests.unit.worker.support import FakeBlobs, eventually, make_pool

GOOD = b"GGUF fake model\n"
OTHER = b"GGUF another fake model\n"
NEVER_READY = b"SLOW\n"


def _only(pool: RunnerPool) -> RunnerSnapshot:
    [snapshot] = pool.snapshot()
    return snapshot


def _sockets(runtime_dir: Path) -> list[Path]:
    return list(runtime_dir.glob("*.sock"))


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def test_load_starts_one_ready_runner(
    pool: RunnerPool, blobs: FakeBlobs, runtime_dir: Path
) -> None:
    spec = blobs.model(GOOD)
    snapshot = await pool.load(spec, "ai/fake:latest", LoadOptions(context_size=2048))
    assert snapshot.state is RunnerState.READY
    assert snapshot.generation == 1
    assert snapshot.reference == "ai/fake:latest"
    assert snapshot.memory_bytes == len(GOOD)
    assert snapshot.context_size == 2048
    assert snapshot.pid is not None and is_alive(snapshot.pid)
    argv = _cmdline(snapshot.pid)
    assert argv[argv.index("--ctx-size") + 1] == "2048"
    assert len(_sockets(runtime_dir)) == 1

    again = await pool.load(spec, "ai/fake:latest", LoadOptions(context_size=2048))
    assert (again.generation, again.pid) == (1, snapshot.pid)
    assert blobs.calls == 1


async def test_concurrent_loads_of_one_model_share_one_start(
    pool: RunnerPool, blobs: FakeBlobs
) -> None:
    spec = blobs.model(GOOD)
    blobs.gate = asyncio.Event()
    loads = [asyncio.create_task(pool.load(spec, "ai/fake")) for _ in range(3)]
    await eventually(lambda: blobs.calls == 1, what="the first blob fetch")
    assert _only(pool).state is RunnerState.STARTING
    blobs.gate.set()
    snapshots = await asyncio.gather(*loads)
    assert {(s.pid, s.generation) for s in snapshots} == {(snapshots[0].pid, 1)}
    assert blobs.calls == 1


async def test_a_slow_load_does_not_block_other_models(pool: RunnerPool, blobs: FakeBlobs) -> None:
    slow = blobs.model(NEVER_READY)
    slow_load = asyncio.create_task(pool.load(slow, "ai/slow"))
    await eventually(
        lambda: bool(pool.snapshot()) and pool.snapshot()[0].pid is not None,
        what="the slow runner to spawn",
    )
    fast = await asyncio.wait_for(pool.load(blobs.model(OTHER), "ai/fast"), 10)
    assert fast.state is RunnerState.READY
    assert await pool.unload(slow.model_id)
    with pytest.raises(RunnerStoppedError, match="unloaded"):
        await slow_load


async def test_crash_at_start_is_a_typed_error_and_leaves_nothing_behind(
    pool: RunnerPool, blobs: FakeBlobs, runtime_dir: Path
) -> None:
    spec = blobs.model(b"CRASH llama_model_load: error loading model: bad tensor data\n")
    with pytest.raises(ModelLoadError, match="bad tensor data"):
        await pool.load(spec, "ai/broken")
    snapshot = _only(pool)
    assert snapshot.state is RunnerState.FAILED
    assert "bad tensor data" in snapshot.error
    assert snapshot.pid is not None and not is_alive(snapshot.pid)
    assert not _sockets(runtime_dir)


async def test_ready_timeout_stops_the_process(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    pool = make_pool(fake_binary, runtime_dir, blobs, ready_timeout=0.3)
    try:
        with pytest.raises(RunnerTimeoutError, match=r"not ready within 0\.3s"):
            await pool.load(blobs.model(NEVER_READY), "ai/slow")
        snapshot = _only(pool)
        assert snapshot.state is RunnerState.FAILED
        assert snapshot.pid is not None and not is_alive(snapshot.pid)
    finally:
        await pool.close()


async def test_crash_after_ready_fails_the_runner_and_a_new_load_starts_fresh(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    changes: list[int] = []
    pool = make_pool(
        fake_binary, runtime_dir, blobs, on_change=lambda: changes.append(len(changes))
    )
    try:
        spec = blobs.model(GOOD)
        first = await pool.load(spec, "ai/fake")
        assert first.pid is not None
        notified = len(changes)
        os.kill(first.pid, signal.SIGKILL)
        await eventually(lambda: _only(pool).state is RunnerState.FAILED, what="FAILED")
        assert "exited unexpectedly" in _only(pool).error
        assert len(changes) > notified  # the membership heartbeat is triggered
        assert not _sockets(runtime_dir)
        with pytest.raises(ModelNotReadyError, match="FAILED"):
            async with pool.acquire(spec.model_id):
                pass

        second = await pool.load(spec, "ai/fake")
        assert second.state is RunnerState.READY
        assert second.generation == 2
        assert second.pid != first.pid
    finally:
        await pool.close()


async def test_leases_are_released_on_every_path(pool: RunnerPool, blobs: FakeBlobs) -> None:
    spec = blobs.model(GOOD)
    await pool.load(spec, "ai/fake")
    async with pool.acquire(spec.model_id) as runner:
        assert runner.model_id == spec.model_id
        assert _only(pool).in_flight == 1
    assert _only(pool).in_flight == 0

    with pytest.raises(RuntimeError):
        async with pool.acquire(spec.model_id):
            raise RuntimeError("request failed")
    assert _only(pool).in_flight == 0

    async def hold() -> None:
        async with pool.acquire(spec.model_id):
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold())
    await eventually(lambda: _only(pool).in_flight == 1, what="the lease")
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert _only(pool).in_flight == 0


async def test_acquire_of_a_model_not_loaded(pool: RunnerPool) -> None:
    with pytest.raises(ModelNotReadyError, match="not loaded"):
        async with pool.acquire("sha256:" + "0" * 64):
            pass


async def test_unload_drains_in_flight_requests_then_stops(
    pool: RunnerPool, blobs: FakeBlobs
) -> None:
    spec = blobs.model(GOOD)
    pid = (await pool.load(spec, "ai/fake")).pid
    assert pid is not None
    finish = asyncio.Event()

    async def request() -> None:
        async with pool.acquire(spec.model_id):
            await finish.wait()

    in_flight = asyncio.create_task(request())
    await eventually(lambda: _only(pool).in_flight == 1, what="the request")
    unloading = asyncio.create_task(pool.unload(spec.model_id))
    await eventually(lambda: _only(pool).state is RunnerState.DRAINING, what="DRAINING")
    assert is_alive(pid)
    with pytest.raises(ModelNotReadyError):
        async with pool.acquire(spec.model_id):
            pass
    finish.set()
    assert await unloading is True
    await in_flight
    assert not is_alive(pid)
    assert pool.snapshot() == []


async def test_unload_stops_after_the_drain_timeout(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    pool = make_pool(fake_binary, runtime_dir, blobs, drain_timeout=0.2)
    spec = blobs.model(GOOD)
    pid = (await pool.load(spec, "ai/fake")).pid
    assert pid is not None

    async def stuck_request() -> None:
        async with pool.acquire(spec.model_id):
            await asyncio.Event().wait()

    stuck = asyncio.create_task(stuck_request())
    try:
        await eventually(lambda: _only(pool).in_flight == 1, what="the request")
        assert await asyncio.wait_for(pool.unload(spec.model_id), 5) is True
        assert not is_alive(pid)
    finally:
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        await pool.close()


async def test_unload_while_loading_cancels_the_start(pool: RunnerPool, blobs: FakeBlobs) -> None:
    spec = blobs.model(NEVER_READY)
    loading = asyncio.create_task(pool.load(spec, "ai/slow"))
    await eventually(
        lambda: bool(pool.snapshot()) and pool.snapshot()[0].pid is not None,
        what="the runner to spawn",
    )
    pid = _only(pool).pid
    assert pid is not None
    assert await pool.unload(spec.model_id) is True
    with pytest.raises(RunnerStoppedError):
        await loading
    assert not is_alive(pid)
    assert pool.snapshot() == []
    assert await pool.unload(spec.model_id) is False


async def test_max_runners_is_enforced(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    pool = make_pool(fake_binary, runtime_dir, blobs, max_runners=1)
    try:
        first = blobs.model(GOOD)
        await pool.load(first, "ai/one")
        with pytest.raises(CapacityError, match="WORKER_MAX_RUNNERS"):
            await pool.load(blobs.model(OTHER), "ai/two")
        await pool.unload(first.model_id)
        assert (await pool.load(blobs.model(OTHER), "ai/two")).state is RunnerState.READY
    finally:
        await pool.close()


async def test_a_runner_ignoring_sigterm_is_killed(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    pool = make_pool(
        fake_binary, runtime_dir, blobs, llama_args=("--fake-ignore-sigterm",), stop_timeout=0.3
    )
    spec = blobs.model(GOOD)
    pid = (await pool.load(spec, "ai/fake")).pid
    assert pid is not None
    await pool.unload(spec.model_id)
    assert not is_alive(pid)
    await pool.close()


async def test_close_stops_every_runner_and_pending_load(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    pool = make_pool(fake_binary, runtime_dir, blobs)
    pids = [(await pool.load(blobs.model(content), "ai/x")).pid for content in (GOOD, OTHER)]
    loading = asyncio.create_task(pool.load(blobs.model(NEVER_READY), "ai/slow"))
    await eventually(lambda: len(pool.snapshot()) == 3, what="three runners")
    await pool.close()
    with pytest.raises(RunnerStoppedError):
        await loading
    assert all(pid is not None and not is_alive(pid) for pid in pids)
    with pytest.raises(RunnerStoppedError, match="shutting down"):
        await pool.load(blobs.model(GOOD), "ai/x")


async def test_chat_template_layer_is_passed_and_license_ignored(
    pool: RunnerPool, blobs: FakeBlobs
) -> None:
    template = blobs.add(b"{{ messages }}", CHAT_TEMPLATE_MEDIA_TYPE)
    license_layer = blobs.add(b"Apache-2.0", LICENSE_MEDIA_TYPE)
    del blobs.paths[license_layer.digest]  # fetching it would fail the load
    spec = blobs.model(GOOD, template, license_layer)
    snapshot = await pool.load(spec, "ai/fake")
    assert snapshot.pid is not None
    argv = _cmdline(snapshot.pid)
    assert argv[argv.index("--chat-template-file") + 1] == str(blobs.paths[template.digest])


async def test_model_without_gguf_layer_is_refused(pool: RunnerPool, blobs: FakeBlobs) -> None:
    license_layer = blobs.add(b"MIT", LICENSE_MEDIA_TYPE)
    spec = ModelSpec(model_id="sha256:" + "1" * 64, layers=(license_layer,))
    with pytest.raises(InvalidModelError, match="no GGUF layer"):
        await pool.load(spec, "ai/nothing")
    assert pool.snapshot() == []
