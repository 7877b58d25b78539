"""A real control plane (registry, scheduler, gateway as processes) serving through a fleet of
simulated workers: the scheduler places and routes to them as to any worker, and the official
`openai` SDK gets OpenAI-shaped answers through the real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import openai
import pytest

from modelrunner.v1 import (
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from services.common.grpc_client import open_channel
from services.worker.fleet import SimulatedFleet, SimulatedWorkerSpec
from services.worker.simulated.answers import FINGERPRINT
from tests.support.cluster import ProcessCluster, build_cluster

pytestmark = pytest.mark.integration

MODEL = "ai/smollm2"
WORKERS = ("sim-a", "sim-b", "sim-c")


@pytest.fixture(scope="module")
async def control_plane(
    tmp_path_factory: pytest.TempPathFactory, gguf_path: Path
) -> AsyncIterator[ProcessCluster]:
    """Registry, scheduler and gateway as processes; the workers are the simulated fleet."""
    plane = build_cluster(tmp_path_factory.mktemp("simulated"), {}, {"SCHEDULER_STATE_PATH": ""})
    try:
        await plane.start()
        # The bundled model, as the stack packages it; simulated workers never fetch it.
        await plane.package(gguf_path, MODEL)
        yield plane
    finally:
        await plane.stop()


@pytest.fixture
async def fleet(control_plane: ProcessCluster) -> AsyncIterator[SimulatedFleet]:
    specs = [
        SimulatedWorkerSpec(
            worker_id=worker_id, memory_bytes=8 * 1024**3, tokens_per_second=400.0, load_time=0.2
        )
        for worker_id in WORKERS
    ]
    async with SimulatedFleet(
        specs,
        scheduler_address=control_plane.scheduler_address,
        registry_address=control_plane.registry_address,
        heartbeat_interval=0.5,
    ) as running:
        yield running


async def _serving(fleet: SimulatedFleet) -> list[str]:
    """The fleet workers with a READY runner, asked over their Worker API."""
    ready = []
    for worker_id in WORKERS:
        async with open_channel(fleet.address(worker_id)) as channel:
            listed = await worker_pb2_grpc.WorkerStub(channel).ListRunners(
                worker_pb2.ListRunnersRequest(), timeout=5
            )
        if any(runner.reference.startswith(MODEL) for runner in listed.runners):
            ready.append(worker_id)
    return ready


async def test_the_scheduler_sees_the_fleet_as_workers(
    control_plane: ProcessCluster, fleet: SimulatedFleet
) -> None:
    async with open_channel(control_plane.scheduler_address) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerStub(channel)
        try:
            listed = await scheduler.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            pytest.fail(f"ListWorkers: {exc.code().name}: {exc.details()}")
    workers = {status.worker.worker_id: status for status in listed.workers}
    for worker_id in WORKERS:
        assert workers[worker_id].alive
        assert workers[worker_id].worker.address == fleet.address(worker_id)
        assert workers[worker_id].worker.memory_total_bytes == 8 * 1024**3


async def test_an_openai_chat_is_answered_by_a_simulated_worker(
    control_plane: ProcessCluster, fleet: SimulatedFleet
) -> None:
    client = openai.AsyncOpenAI(
        base_url=control_plane.gateway_url + "/engines/llama.cpp/v1",
        api_key="unused",
        max_retries=0,
        timeout=60,
    )
    async with client:
        completion = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello to the simulated fleet"}],
            max_tokens=5,
        )
        assert completion.system_fingerprint == FINGERPRINT
        assert completion.choices[0].message.content == "token0 token1 token2 token3 token4"
        assert completion.usage is not None and completion.usage.prompt_tokens == 6
        [serving] = await _serving(fleet)

        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "and stream it"}],
            max_tokens=3,
            stream=True,
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert "".join(pieces) == "token0 token1 token2"
        assert await _serving(fleet) == [serving]
