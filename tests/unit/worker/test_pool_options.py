"""Per-model load options: slots, per-slot context, model arguments, memory; restarts on change."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.worker.engine import LoadOptions
from services.worker.errors import InvalidLoadOptionsError
from services.worker.hardware import MemoryGauge, MemoryInfo
from services.worker.pool import RunnerPool
from services.worker.runner import RunnerState
from tests.support.processes import is_alive
from tests.unit.worker.support import FakeBlobs, eventually, make_pool

GOOD = b"GGUF fake model\n"


def _cmdline(pid: int | None) -> list[str]:
    assert pid is not None
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


async def test_parallel_gives_every_slot_the_context_size(
    pool: RunnerPool, blobs: FakeBlobs
) -> None:
    snapshot = await pool.load(
        blobs.model(GOOD), "ai/fake", LoadOptions(context_size=1024, parallel=3)
    )
    argv = _cmdline(snapshot.pid)
    assert (_value(argv, "--parallel"), _value(argv, "--ctx-size")) == ("3", "3072")
    assert (snapshot.parallel, snapshot.context_size) == (3, 1024)


async def test_defaults_leave_slots_and_context_to_llama_server(
    pool: RunnerPool, blobs: FakeBlobs
) -> None:
    snapshot = await pool.load(blobs.model(GOOD), "ai/fake")
    argv = _cmdline(snapshot.pid)
    assert "--parallel" not in argv and "--ctx-size" not in argv
    assert (snapshot.parallel, snapshot.context_size) == (0, 0)


async def test_model_args_come_after_llama_args(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    pool = make_pool(fake_binary, runtime_dir, blobs, llama_args=("--temp", "0.1"))
    try:
        snapshot = await pool.load(
            blobs.model(GOOD), "ai/fake", LoadOptions(llama_args=("--temp", "0.7"))
        )
        argv = _cmdline(snapshot.pid)
        assert argv[-4:] == ["--temp", "0.1", "--temp", "0.7"]
    finally:
        await pool.close()


@pytest.mark.parametrize("args", [("--ctx-size", "99"), ("-np", "9"), ("--port=1",)])
async def test_reserved_model_args_are_refused_before_anything_starts(
    pool: RunnerPool, blobs: FakeBlobs, args: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidLoadOptionsError, match="may not set"):
        await pool.load(blobs.model(GOOD), "ai/fake", LoadOptions(llama_args=args))
    assert pool.snapshot() == []
    assert blobs.calls == 0


@pytest.mark.parametrize(
    ("estimate", "expected"),
    [(0, len(GOOD)), (5, len(GOOD)), (10_000, 10_000)],
    ids=["no-estimate", "estimate-below-weights", "estimate-above-weights"],
)
async def test_memory_is_the_larger_of_weights_and_estimate(
    pool: RunnerPool, blobs: FakeBlobs, estimate: int, expected: int
) -> None:
    snapshot = await pool.load(
        blobs.model(GOOD), "ai/fake", LoadOptions(memory_estimate_bytes=estimate)
    )
    assert snapshot.memory_bytes == expected
    gauge = MemoryGauge(50_000, pool.loaded_bytes, meminfo=lambda: MemoryInfo(0, 0))
    assert (gauge.total(), gauge.free()) == (50_000, 50_000 - expected)


@pytest.mark.parametrize(
    "changed",
    [
        LoadOptions(context_size=2048, parallel=4),
        LoadOptions(context_size=1024, parallel=2),
        LoadOptions(context_size=2048, parallel=2, llama_args=("--temp", "0.2")),
    ],
    ids=["parallel", "context", "args"],
)
async def test_other_options_restart_the_runner_same_options_do_not(
    pool: RunnerPool, blobs: FakeBlobs, changed: LoadOptions
) -> None:
    spec = blobs.model(GOOD)
    first = await pool.load(spec, "ai/fake", LoadOptions(context_size=2048, parallel=2))
    same = await pool.load(
        spec, "ai/fake", LoadOptions(context_size=2048, parallel=2, memory_estimate_bytes=7)
    )
    assert (same.generation, same.pid) == (first.generation, first.pid)

    second = await pool.load(spec, "ai/fake", changed)
    assert second.state is RunnerState.READY
    assert second.generation == first.generation + 1
    assert first.pid is not None and not is_alive(first.pid)
    argv = _cmdline(second.pid)
    assert _value(argv, "--parallel") == str(changed.parallel)
    assert _value(argv, "--ctx-size") == str(changed.context_size * changed.parallel)
    assert tuple(argv[len(argv) - len(changed.llama_args) :]) == changed.llama_args
    assert [(s.generation, s.state) for s in pool.snapshot()] == [
        (second.generation, RunnerState.READY)
    ]


async def test_a_restart_drains_the_old_runner_first(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    # One runner at most: replacing it must not count as a second model.
    pool = make_pool(fake_binary, runtime_dir, blobs, max_runners=1)
    spec = blobs.model(GOOD)
    try:
        first = await pool.load(spec, "ai/fake", LoadOptions(parallel=1))
        finish = asyncio.Event()

        async def request() -> None:
            async with pool.acquire(spec.model_id):
                await finish.wait()

        in_flight = asyncio.create_task(request())
        await eventually(lambda: pool.snapshot()[0].in_flight == 1, what="the request")
        restart = asyncio.create_task(pool.load(spec, "ai/fake", LoadOptions(parallel=2)))
        await eventually(
            lambda: (
                [s.state for s in pool.snapshot()] == [RunnerState.DRAINING, RunnerState.STARTING]
            ),
            what="the old runner draining while the new one waits",
        )
        assert first.pid is not None and is_alive(first.pid)
        finish.set()
        second = await restart
        await in_flight
        assert second.parallel == 2 and not is_alive(first.pid)
    finally:
        await pool.close()


async def test_a_load_with_other_options_waits_for_the_one_under_way(
    pool: RunnerPool, blobs: FakeBlobs
) -> None:
    spec = blobs.model(GOOD)
    blobs.gate = asyncio.Event()
    first = asyncio.create_task(pool.load(spec, "ai/fake", LoadOptions(parallel=1)))
    await eventually(lambda: blobs.calls == 1, what="the first load to fetch")
    second = asyncio.create_task(pool.load(spec, "ai/fake", LoadOptions(parallel=2)))
    await asyncio.sleep(0)
    assert not second.done()
    blobs.gate.set()
    one, two = await asyncio.gather(first, second)
    assert (one.parallel, two.parallel) == (1, 2)
    assert two.generation == one.generation + 1
    [current] = pool.snapshot()
    assert (current.generation, current.parallel) == (two.generation, 2)
