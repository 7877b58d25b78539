"""`GET /metrics` with a fake scheduler and fake workers: who is scraped, labels, faults."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelrunner.v1 import common_pb2, scheduler_pb2, worker_pb2, worker_pb2_grpc
from services.gateway.config import GatewaySettings
from tests.support.processes import free_port
from tests.unit.gateway.conftest import Neighbours, asgi_client
from tests.unit.gateway.fakes import MODEL_ID, FakeWorker

OTHER_ID = "sha256:" + "cd" * 32
TEXT = (
    "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
    "# TYPE llamacpp:prompt_tokens_total counter\n"
    "llamacpp:prompt_tokens_total {count}\n"
)


def runner_metrics(
    count: int, reference: str = "ai/smollm2:latest", model_id: str = MODEL_ID
) -> worker_pb2.RunnerMetrics:
    return worker_pb2.RunnerMetrics(
        model_id=model_id, reference=reference, text=TEXT.format(count=count)
    )


def placement(
    worker_id: str,
    address: str,
    *,
    model_id: str = MODEL_ID,
    state: common_pb2.RunnerState.ValueType = common_pb2.RUNNER_STATE_READY,
) -> scheduler_pb2.Placement:
    return scheduler_pb2.Placement(
        worker_id=worker_id,
        worker_address=address,
        runner=common_pb2.RunnerInfo(model_id=model_id, reference="ai/smollm2:latest", state=state),
    )


def runners_part(text: str) -> str:
    """The page without the gateway's own series, which come first (test_gateway_metrics.py)."""
    return "".join(
        line for line in text.splitlines(keepends=True) if "modelrunner_gateway_" not in line
    )


def sample_line(count: int, model: str, worker: str) -> str:
    labels = f'backend="llama.cpp",model="{model}",mode="completion",worker="{worker}"'
    return f"llamacpp:prompt_tokens_total{{{labels}}} {count}\n"


@contextlib.asynccontextmanager
async def serving(worker: FakeWorker) -> AsyncIterator[str]:
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(worker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    "placements",
    [[], [placement("worker-1", "127.0.0.1:1", state=common_pb2.RUNNER_STATE_STARTING)]],
    ids=["none", "only-loading"],
)
async def test_no_ready_runner_says_so_like_dmr(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    placements: list[scheduler_pb2.Placement],
) -> None:
    neighbours.scheduler.placements = placements

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert runners_part(response.text) == "# No active runners\n"
    assert neighbours.worker.scrapes == 0


async def test_each_runner_is_labelled_and_a_worker_is_asked_once(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    address = neighbours.worker_address
    neighbours.scheduler.placements = [
        placement("worker-1", address),
        placement("worker-1", address, model_id=OTHER_ID),
    ]
    neighbours.worker.metrics = [
        runner_metrics(31),
        runner_metrics(7, reference="ai/other:v2", model_id=OTHER_ID),
    ]

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert runners_part(response.text) == (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        + sample_line(31, "ai/smollm2:latest", "worker-1")
        + sample_line(7, "ai/other:v2", "worker-1")
    )
    assert neighbours.worker.scrapes == 1
    [family] = text_string_to_metric_families(runners_part(response.text))
    assert [sample.value for sample in family.samples] == [31, 7]


async def test_two_workers_merge_into_one_family(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    second = FakeWorker()
    second.metrics = [runner_metrics(5)]
    neighbours.worker.metrics = [runner_metrics(31)]
    async with serving(second) as second_address:
        neighbours.scheduler.placements = [
            placement("worker-2", second_address),
            placement("worker-1", neighbours.worker_address),
        ]
        response = await client.get("/metrics")

    assert response.text.count("# TYPE llamacpp:prompt_tokens_total counter\n") == 1
    # Ordered by worker id, whatever order the scheduler listed them in.
    assert response.text.endswith(
        sample_line(31, "ai/smollm2:latest", "worker-1")
        + sample_line(5, "ai/smollm2:latest", "worker-2")
    )


async def test_failing_and_unreachable_workers_are_left_out(
    client: httpx.AsyncClient, neighbours: Neighbours, caplog: pytest.LogCaptureFixture
) -> None:
    failing = FakeWorker()
    failing.metrics_error = (grpc.StatusCode.UNAVAILABLE, "worker is shutting down")
    neighbours.worker.metrics = [runner_metrics(31)]
    async with serving(failing) as failing_address:
        neighbours.scheduler.placements = [
            placement("worker-1", neighbours.worker_address),
            placement("worker-2", failing_address),
            placement("worker-3", f"127.0.0.1:{free_port()}"),
        ]
        with caplog.at_level(logging.WARNING, logger="services.gateway.metrics.collect"):
            response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.text.endswith(sample_line(31, "ai/smollm2:latest", "worker-1"))
    runners = runners_part(response.text)
    assert "worker-2" not in runners and "worker-3" not in runners
    warnings = [record.getMessage() for record in caplog.records]
    assert any("worker-2" in m and "shutting down" in m for m in warnings)
    assert any("worker-3" in m for m in warnings)


async def test_stalled_workers_are_left_out_at_the_deadline_all_at_once(
    settings: GatewaySettings, neighbours: Neighbours
) -> None:
    stalled = [FakeWorker() for _ in range(3)]
    for worker in stalled:
        worker.metrics_stall = True
    neighbours.worker.metrics = [runner_metrics(31)]
    async with contextlib.AsyncExitStack() as stack:
        addresses = [await stack.enter_async_context(serving(worker)) for worker in stalled]
        neighbours.scheduler.placements = [
            placement("worker-1", neighbours.worker_address),
            *(placement(f"stalled-{n}", address) for n, address in enumerate(addresses)),
        ]
        fast = dataclasses.replace(settings, metrics_timeout=0.5)
        async with asgi_client(fast) as client:
            started = time.monotonic()
            response = await client.get("/metrics")
            elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.text.endswith(sample_line(31, "ai/smollm2:latest", "worker-1"))
    assert [worker.scrapes for worker in stalled] == [1, 1, 1]
    # Concurrent: one deadline's worth, not three.
    assert 0.5 <= elapsed < 1.2


async def test_scheduler_down_is_503(settings: GatewaySettings) -> None:
    down = f"127.0.0.1:{free_port()}"
    async with asgi_client(dataclasses.replace(settings, scheduler_address=down)) as client:
        response = await client.get("/metrics")

    assert response.status_code == 503
    assert "scheduler" in response.json()["error"]["message"]


async def test_get_only(client: httpx.AsyncClient) -> None:
    response = await client.post("/metrics")
    assert response.status_code == 405


async def test_disable_metrics_removes_the_route(
    settings: GatewaySettings, neighbours: Neighbours
) -> None:
    disabled = dataclasses.replace(
        settings, metrics_enabled=GatewaySettings.from_env({"DISABLE_METRICS": "1"}).metrics_enabled
    )
    neighbours.scheduler.placements = [placement("worker-1", neighbours.worker_address)]
    async with asgi_client(disabled) as client:
        response = await client.get("/metrics")

    assert response.status_code == 404
    assert neighbours.worker.scrapes == 0
