"""SimulatedFleet against an in-process fake scheduler: many workers, one process, same surface."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from modelrunner.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from services.common.digest import sha256_digest
from services.common.grpc_client import open_channel
from services.worker.artifact import GGUF_MEDIA_TYPE
from services.worker.fleet import FleetError, SimulatedFleet, SimulatedWorkerSpec, parse_size
from tests.support.processes import free_port
from tests.unit.worker.fake_scheduler import FakeScheduler, serve_scheduler
from tests.unit.worker.support import eventually

GIB = 1024**3
MODEL = common_pb2.Model(
    id=sha256_digest(b"sim manifest"),
    config=common_pb2.ModelConfig(context_size=1024),
    layers=[
        common_pb2.Descriptor(
            media_type=GGUF_MEDIA_TYPE, digest=sha256_digest(b"sim weights"), size=GIB
        )
    ],
)


@pytest.fixture
async def scheduler() -> AsyncIterator[tuple[FakeScheduler, str]]:
    fake = FakeScheduler(heartbeat_interval_ms=50)
    server, address = await serve_scheduler(fake)
    yield fake, address
    await server.stop(None)


def specs(count: int) -> list[SimulatedWorkerSpec]:
    return [
        SimulatedWorkerSpec(
            worker_id=f"sim-{index}",
            memory_bytes=(index + 1) * GIB,
            tags={"zone": "a" if index % 2 == 0 else "b"},
            tokens_per_second=500.0,
            load_time=0.01,
        )
        for index in range(count)
    ]


def fleet_of(count: int, address: str) -> SimulatedFleet:
    return SimulatedFleet(specs(count), scheduler_address=address, registry_address="unused:1")


async def test_every_worker_registers_with_its_own_id_address_memory_and_tags(
    scheduler: tuple[FakeScheduler, str],
) -> None:
    fake, address = scheduler
    async with fleet_of(6, address) as fleet:
        registered = {request.worker.worker_id: request.worker for request in fake.registers}
        assert sorted(registered) == fleet.worker_ids == [f"sim-{i}" for i in range(6)]
        for index, worker_id in enumerate(fleet.worker_ids):
            info = registered[worker_id]
            assert info.address == fleet.address(worker_id)
            assert info.memory_total_bytes == info.memory_free_bytes == (index + 1) * GIB
            assert dict(info.tags) == {"accelerator": "cpu", "zone": "ab"[index % 2]}
            assert info.cache_bytes == 0
        assert len({info.address for info in registered.values()}) == 6
        await eventually(
            lambda: {h.worker_id for h in fake.heartbeats} == set(fleet.worker_ids),
            what="every worker to heartbeat",
        )


async def test_a_fleet_worker_serves_the_worker_api(scheduler: tuple[FakeScheduler, str]) -> None:
    fake, address = scheduler
    async with fleet_of(2, address) as fleet, open_channel(fleet.address("sim-1")) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        loaded = await stub.Load(
            worker_pb2.LoadRequest(model=MODEL, reference="ai/sim", parallel=2), timeout=5
        )
        assert loaded.runner.state == common_pb2.RUNNER_STATE_READY
        assert (loaded.runner.parallel, loaded.runner.context_size) == (2, 1024)
        assert loaded.runner.memory_bytes == GIB
        # Reported at once, with what it leaves of the worker's 2 GiB.
        await eventually(
            lambda: any(
                h.worker_id == "sim-1" and h.runners and h.memory_free_bytes == GIB
                for h in fake.heartbeats
            ),
            what="the load in a heartbeat",
        )
        call = stub.Generate(
            worker_pb2.GenerateRequest(
                request_id="r1",
                model_id=MODEL.id,
                endpoint=common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS,
                stream=True,
                lease_id="lease-1",
                body=json.dumps(
                    {"messages": [{"role": "user", "content": "hi"}], "stream": True}
                ).encode(),
            ),
            timeout=5,
        )
        messages = [message async for message in call]
        assert messages[0].head.status_code == 200
        body = b"".join(message.chunk for message in messages[1:])
        assert body.endswith(b"data: [DONE]\n\n") and b"token15" in body
        assert [r.lease_id for r in fake.releases] == ["lease-1"]
        scraped = await stub.ScrapeMetrics(worker_pb2.ScrapeMetricsRequest(), timeout=5)
        assert "llamacpp:tokens_predicted_total 16\n" in scraped.runners[0].text


async def test_a_client_cancelling_generate_frees_the_slot(
    scheduler: tuple[FakeScheduler, str],
) -> None:
    fake, address = scheduler
    async with fleet_of(1, address) as fleet, open_channel(fleet.address("sim-0")) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        await stub.Load(worker_pb2.LoadRequest(model=MODEL, parallel=1), timeout=5)
        call = stub.Generate(
            worker_pb2.GenerateRequest(
                model_id=MODEL.id,
                endpoint=common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS,
                stream=True,
                lease_id="lease-cancel",
                body=b'{"messages": [{"role": "user", "content": "x"}], "stream": true,'
                b' "max_tokens": 100000}',
            ),
            timeout=30,
        )
        assert (await call.read()).WhichOneof("part") == "head"
        assert (await call.read()).WhichOneof("part") == "chunk"
        call.cancel()
        await eventually(lambda: len(fake.releases) == 1, what="the release")
        pool = fleet.node("sim-0").pool
        await eventually(lambda: pool.snapshot()[0].in_flight == 0, what="the lease to end")
        scraped = await stub.ScrapeMetrics(worker_pb2.ScrapeMetricsRequest(), timeout=5)
        assert "llamacpp:requests_processing 0\n" in scraped.runners[0].text


async def test_kill_stops_one_worker_without_a_farewell(
    scheduler: tuple[FakeScheduler, str],
) -> None:
    fake, address = scheduler
    async with fleet_of(3, address) as fleet:
        victim = fleet.address("sim-1")
        async with open_channel(victim) as channel:
            await worker_pb2_grpc.WorkerStub(channel).Load(
                worker_pb2.LoadRequest(model=MODEL), timeout=5
            )
        await eventually(
            lambda: any(
                h.worker_id == "sim-1"
                and [r.state for r in h.runners] == [common_pb2.RUNNER_STATE_READY]
                for h in fake.heartbeats
            ),
            what="the READY runner reported",
        )
        await fleet.kill("sim-1")
        killed_at = len(fake.heartbeats)
        before = sum(1 for h in fake.heartbeats if h.worker_id == "sim-1")
        await eventually(
            lambda: sum(1 for h in fake.heartbeats[killed_at:] if h.worker_id == "sim-0") >= 3,
            what="the others to keep heartbeating",
        )
        assert sum(1 for h in fake.heartbeats if h.worker_id == "sim-1") == before
        # No farewell: the last word the scheduler had from it still shows the model READY.
        last = [h for h in fake.heartbeats if h.worker_id == "sim-1"][-1]
        assert [r.state for r in last.runners] == [common_pb2.RUNNER_STATE_READY]
        async with open_channel(victim) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await worker_pb2_grpc.WorkerStub(channel).ListRunners(
                    worker_pb2.ListRunnersRequest(), timeout=1
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_leaving_the_fleet_says_farewell(scheduler: tuple[FakeScheduler, str]) -> None:
    fake, address = scheduler
    async with fleet_of(2, address) as fleet, open_channel(fleet.address("sim-0")) as channel:
        await worker_pb2_grpc.WorkerStub(channel).Load(
            worker_pb2.LoadRequest(model=MODEL), timeout=5
        )
    last = [h for h in fake.heartbeats if h.worker_id == "sim-0"][-1]
    assert [r.state for r in last.runners] == [common_pb2.RUNNER_STATE_STOPPED]


async def test_a_scheduler_that_never_answers_fails_the_start_cleanly() -> None:
    fleet = SimulatedFleet(
        specs(2),
        scheduler_address=f"127.0.0.1:{free_port()}",
        registry_address="unused:1",
        register_timeout=0.3,
    )
    with pytest.raises(FleetError, match="2 simulated workers did not register"):
        async with fleet:
            pass
    await asyncio.sleep(0)


def test_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="memory_bytes"):
        SimulatedWorkerSpec(worker_id="w", memory_bytes=0)
    with pytest.raises(ValueError, match="duplicate worker ids: w"):
        SimulatedFleet(
            [SimulatedWorkerSpec("w", 1), SimulatedWorkerSpec("w", 1)],
            scheduler_address="x:1",
            registry_address="y:1",
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GiB", 16 * GIB),
        ("512MiB", 512 * 1024**2),
        ("8GB", 8 * 10**9),
        ("1000", 1000),
        ("2k", 2000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected
