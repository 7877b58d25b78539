"""Membership against an in-process fake scheduler: register, heartbeat, notify, re-register."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from modelrunner.v1 import common_pb2, scheduler_pb2_grpc
from services.common.grpc_client import open_channel
from services.worker.channels import open_control_channel
from services.worker.membership import Membership, MembershipTimings, WorkerIdentity
from services.worker.runner import RunnerSnapshot, RunnerState
from tests.support.processes import free_port
from tests.unit.worker.fake_scheduler import FakeScheduler, serve_scheduler
from tests.unit.worker.support import eventually

IDENTITY = WorkerIdentity(
    worker_id="w-1", address="127.0.0.1:7777", tags={"accelerator": "cpu", "zone": "a"}
)


def _runner(state: RunnerState) -> RunnerSnapshot:
    return RunnerSnapshot(
        model_id="sha256:" + "a" * 64,
        reference="ai/fake:latest",
        generation=3,
        state=state,
        in_flight=1,
        memory_bytes=1000,
        context_size=2048,
        error="boom" if state is RunnerState.FAILED else "",
        pid=None,
    )


class CountingStub:
    """The real stub, counting Register attempts (failed ones included)."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
        self._stub = stub
        self.register_attempts = 0
        self.Heartbeat = stub.Heartbeat

    def Register(self, *args: Any, **kwargs: Any) -> Any:
        self.register_attempts += 1
        return self._stub.Register(*args, **kwargs)


@asynccontextmanager
async def membership_running(
    address: str,
    runners: Callable[[], list[RunnerSnapshot]],
    interval: float = 60.0,
    cache_bytes: Callable[[], int] = lambda: 4_000,
    draining: Callable[[], bool] = lambda: False,
) -> AsyncIterator[tuple[Membership, CountingStub]]:
    async with open_control_channel(address, max_reconnect_backoff=0.2) as channel:
        stub = CountingStub(scheduler_pb2_grpc.SchedulerStub(channel))
        membership = Membership(
            stub,  # type: ignore[arg-type]
            runners=runners,
            draining=draining,
            memory_total=lambda: 8_000,
            memory_free=lambda: 6_000,
            cache_bytes=cache_bytes,
            timings=MembershipTimings(
                heartbeat_interval=interval,
                rpc_timeout=1.0,
                max_backoff=0.2,
                initial_backoff=0.05,
            ),
        )
        task = asyncio.create_task(membership.run(IDENTITY))
        try:
            yield membership, stub
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_registers_then_heartbeats_at_the_schedulers_interval() -> None:
    fake = FakeScheduler(heartbeat_interval_ms=20)
    server, address = await serve_scheduler(fake)
    try:
        async with membership_running(address, lambda: [_runner(RunnerState.READY)]):
            await eventually(lambda: len(fake.heartbeats) >= 3, what="three heartbeats")
        [register] = fake.registers
        assert register.worker.worker_id == "w-1"
        assert register.worker.address == "127.0.0.1:7777"
        assert dict(register.worker.tags) == {"accelerator": "cpu", "zone": "a"}
        assert (register.worker.memory_total_bytes, register.worker.memory_free_bytes) == (
            8_000,
            6_000,
        )
        [runner] = register.runners
        assert (runner.state, runner.generation, runner.in_flight) == (
            common_pb2.RUNNER_STATE_READY,
            3,
            1,
        )
        assert fake.heartbeats[0].worker_id == "w-1"
        assert fake.heartbeats[0].memory_free_bytes == 6_000
        assert register.worker.cache_bytes == 4_000
        assert fake.heartbeats[0].cache_bytes == 4_000
    finally:
        await server.stop(None)


async def test_every_heartbeat_reports_the_current_cache_size() -> None:
    fake = FakeScheduler(heartbeat_interval_ms=20)
    server, address = await serve_scheduler(fake)
    cache = [1_000]
    try:
        async with membership_running(address, list, cache_bytes=lambda: cache[0]) as (m, _):
            await m.wait_registered()
            await eventually(lambda: len(fake.heartbeats) >= 1, what="a heartbeat")
            cache[0] = 9_000
            await eventually(
                lambda: fake.heartbeats[-1].cache_bytes == 9_000, what="the new cache size"
            )
        assert fake.registers[0].worker.cache_bytes == 1_000
        assert fake.heartbeats[0].cache_bytes == 1_000
    finally:
        await server.stop(None)


async def test_a_state_change_is_reported_at_once() -> None:
    fake = FakeScheduler(heartbeat_interval_ms=60_000)
    server, address = await serve_scheduler(fake)
    state = [RunnerState.READY]
    try:
        async with membership_running(address, lambda: [_runner(state[0])]) as (membership, _):
            await eventually(lambda: membership.registered, what="registration")
            assert fake.heartbeats == []
            state[0] = RunnerState.FAILED
            membership.notify()
            await eventually(
                lambda: len(fake.heartbeats) == 1, what="an immediate heartbeat", timeout=3
            )
        runner = fake.heartbeats[0].runners[0]
        assert (runner.state, runner.error) == (common_pb2.RUNNER_STATE_FAILED, "boom")
    finally:
        await server.stop(None)


async def test_heartbeats_say_when_the_worker_is_draining() -> None:
    fake = FakeScheduler(heartbeat_interval_ms=60_000)
    server, address = await serve_scheduler(fake)
    draining = [False]
    try:
        async with membership_running(address, list, draining=lambda: draining[0]) as (
            membership,
            _,
        ):
            await eventually(lambda: membership.registered, what="registration")
            draining[0] = True
            membership.notify()
            await eventually(lambda: len(fake.heartbeats) == 1, what="a heartbeat", timeout=3)
        assert fake.heartbeats[0].draining
    finally:
        await server.stop(None)


async def test_registers_again_when_the_scheduler_forgets_the_worker() -> None:
    fake = FakeScheduler(heartbeat_interval_ms=20, known=False)
    server, address = await serve_scheduler(fake)
    try:
        async with membership_running(address, list):
            await eventually(lambda: len(fake.registers) >= 2, what="a second registration")
        assert len(fake.heartbeats) >= 1
    finally:
        await server.stop(None)


async def test_survives_an_absent_scheduler_and_registers_when_it_appears() -> None:
    port = free_port()
    fake = FakeScheduler(heartbeat_interval_ms=20)
    async with membership_running(f"127.0.0.1:{port}", list) as (membership, stub):
        await eventually(lambda: stub.register_attempts >= 3, what="retries with backoff")
        assert not membership.registered
        server, _ = await serve_scheduler(fake, f"127.0.0.1:{port}")
        try:
            await eventually(lambda: membership.registered, what="registration", timeout=5)
            await eventually(lambda: len(fake.heartbeats) >= 1, what="a heartbeat")
        finally:
            await server.stop(None)
        # Gone again: the worker keeps running and registers afresh when it is back.
        await eventually(lambda: not membership.registered, what="noticing the outage")
        server, _ = await serve_scheduler(fake, f"127.0.0.1:{port}")
        try:
            await eventually(lambda: len(fake.registers) == 2, what="re-registration", timeout=5)
        finally:
            await server.stop(None)


async def test_farewell_sends_a_last_heartbeat() -> None:
    fake = FakeScheduler(heartbeat_interval_ms=60_000)
    server, address = await serve_scheduler(fake)
    try:
        async with open_channel(address) as channel:
            membership = Membership(
                scheduler_pb2_grpc.SchedulerStub(channel),
                runners=list,
                memory_total=lambda: 1,
                memory_free=lambda: 1,
                cache_bytes=lambda: 1,
                timings=MembershipTimings(heartbeat_interval=60, rpc_timeout=1, max_backoff=1),
            )
            await membership.farewell()  # never registered: nothing to say
            assert fake.heartbeats == []
            task = asyncio.create_task(membership.run(IDENTITY))
            await eventually(lambda: membership.registered, what="registration")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await membership.farewell()
        assert len(fake.heartbeats) == 1
    finally:
        await server.stop(None)
