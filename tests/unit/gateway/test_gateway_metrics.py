"""The gateway's own metrics: the stream meter with an injected clock, then through the real app
(ASGI) against fake neighbours: labels, token counts, in-flight requests, and one valid page."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from modelrunner.v1 import common_pb2, scheduler_pb2, worker_pb2
from services.gateway.config import GatewaySettings
from services.gateway.metrics.families import GatewayMetrics
from services.gateway.metrics.meter import StreamMeter
from tests.unit.gateway.conftest import Neighbours, asgi_client
from tests.unit.gateway.fakes import answer, chunk, head
from tests.unit.gateway.test_metrics_routes import placement, runner_metrics

CHAT = "/engines/llama.cpp/v1/chat/completions"
CHAT_ROUTE = CHAT  # registered once per prefix, so the template is the path itself
MODEL = "ai/smollm2:latest"
BODY = b'{"model": "smollm2", "messages": []}'
STREAM_BODY = b'{"model": "smollm2", "stream": true, "messages": []}'
USAGE = b'"usage":{"completion_tokens":3,"prompt_tokens":11,"total_tokens":14}'
# Three tokens, then the usage event (split across two chunks), then [DONE].
STREAM = [
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"c"}}]}\n\n',
    b'data: {"choices":[],' + USAGE[:30],
    USAGE[30:] + b"}\n\n",
    b"data: [DONE]\n\n",
]


class StepClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


def lint_problems(exposition: bytes) -> list[str]:
    """What `promtool check metrics` says about a page, one problem a line.

    The gateway's page carries llama-server's own names (`llamacpp:*`), which DMR keeps as they
    are and promtool flags for their colon; that is the only complaint the page may draw. Any
    structural fault (a family declared twice, a bad line) fails the check outright.
    """
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run(
        [tool, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    problems = (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()
    assert not [line for line in problems if "error while linting" in line], problems
    return problems


def samples(text: str) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# The meter ---------------------------------------------------------------------------------------


def test_a_stream_is_timed_per_token_and_counted_from_its_usage() -> None:
    metrics = GatewayMetrics()
    clock = StepClock()
    meter = StreamMeter(metrics, clock, model=MODEL, started=clock.now - 0.5, streaming=True)
    gaps = [0.0, 0.02, 0.2, 0.01, 0.01, 0.01]
    for gap, data in zip(gaps, STREAM, strict=True):
        clock.now += gap
        meter.chunk(data)
    meter.finish()
    meter.finish()  # a second finish counts nothing twice

    registry = metrics.registry
    ttft = "modelrunner_gateway_time_to_first_token_seconds"
    itl = "modelrunner_gateway_inter_token_latency_seconds"
    assert value(registry, f"{ttft}_count", model=MODEL) == 1
    assert value(registry, f"{ttft}_sum", model=MODEL) == pytest.approx(0.5)
    # Three tokens, two gaps; the usage event and [DONE] carry no token.
    assert value(registry, f"{itl}_count", model=MODEL) == 2
    assert value(registry, f"{itl}_sum", model=MODEL) == pytest.approx(0.22)
    assert value(registry, f"{itl}_bucket", model=MODEL, le="0.025") == 1
    assert value(registry, "modelrunner_gateway_prompt_tokens_total", model=MODEL) == 11
    assert value(registry, "modelrunner_gateway_completion_tokens_total", model=MODEL) == 3


def test_a_whole_answer_counts_tokens_but_has_no_first_token() -> None:
    metrics = GatewayMetrics()
    clock = StepClock()
    meter = StreamMeter(metrics, clock, model=MODEL, started=clock.now, streaming=False)
    body = b'{"choices":[{"message":{"content":"hi"}}],' + USAGE + b"}"
    for part in (body[:40], body[40:]):
        meter.chunk(part)
    meter.finish()

    registry = metrics.registry
    assert (
        value(registry, "modelrunner_gateway_time_to_first_token_seconds_count", model=MODEL)
        is None
    )
    assert value(registry, "modelrunner_gateway_prompt_tokens_total", model=MODEL) == 11
    assert value(registry, "modelrunner_gateway_completion_tokens_total", model=MODEL) == 3


# Through the app ---------------------------------------------------------------------------------


async def test_requests_are_counted_by_route_template_resolved_model_and_status(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    body = b'{"choices":[],' + USAGE + b"}"
    neighbours.worker.scripts.append(answer(200, "application/json", body))
    neighbours.scheduler.assign_errors.append((grpc.StatusCode.NOT_FOUND, "model not found"))

    # Assign errors come before any success.
    assert (await client.post(CHAT, content=BODY)).status_code == 404
    assert (await client.post(CHAT, content=BODY)).status_code == 200
    assert (await client.get("/no/such/route")).status_code == 404
    assert (await client.get("/models")).status_code == 200
    page = samples((await client.get("/metrics")).text)

    requests = "modelrunner_gateway_requests_total"
    # The model label is the scheduler's canonical reference, never the name as typed.
    assert page[f"{requests}{{model={MODEL},route={CHAT_ROUTE},status=200}}"] == 1
    # No model was resolved for the 404: the label stays empty rather than echo user input.
    assert page[f"{requests}{{model=,route={CHAT_ROUTE},status=404}}"] == 1
    assert page[f"{requests}{{model=,route=unmatched,status=404}}"] == 1
    assert page[f"{requests}{{model=,route=/models,status=200}}"] == 1
    assert not [name for name in page if "smollm2," in name or "model=smollm2" in name]
    duration = "modelrunner_gateway_request_duration_seconds_count"
    assert page[f"{duration}{{model={MODEL},route={CHAT_ROUTE}}}"] == 1
    assert page[f"modelrunner_gateway_prompt_tokens_total{{model={MODEL}}}"] == 11
    assert page[f"modelrunner_gateway_completion_tokens_total{{model={MODEL}}}"] == 3
    # A whole answer has no time to first token.
    assert f"modelrunner_gateway_time_to_first_token_seconds_count{{model={MODEL}}}" not in page


async def test_a_stream_reports_first_token_gaps_and_usage(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, "text/event-stream", *STREAM))

    response = await client.post(CHAT, content=STREAM_BODY)
    assert response.status_code == 200
    page = samples((await client.get("/metrics")).text)

    assert page[f"modelrunner_gateway_time_to_first_token_seconds_count{{model={MODEL}}}"] == 1
    assert page[f"modelrunner_gateway_inter_token_latency_seconds_count{{model={MODEL}}}"] == 2
    assert page[f"modelrunner_gateway_prompt_tokens_total{{model={MODEL}}}"] == 11
    assert page[f"modelrunner_gateway_completion_tokens_total{{model={MODEL}}}"] == 3


async def test_an_error_answer_is_neither_timed_nor_counted_as_tokens(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    error = b'{"error":{"message":"bad","usage":{"prompt_tokens":1,"completion_tokens":1}}}'
    neighbours.worker.scripts.append(answer(400, "application/json", error))

    assert (await client.post(CHAT, content=STREAM_BODY)).status_code == 400
    page = samples((await client.get("/metrics")).text)

    assert page[
        f"modelrunner_gateway_requests_total{{model={MODEL},route={CHAT_ROUTE},status=400}}"
    ]
    assert f"modelrunner_gateway_prompt_tokens_total{{model={MODEL}}}" not in page
    assert f"modelrunner_gateway_time_to_first_token_seconds_count{{model={MODEL}}}" not in page


async def test_in_flight_counts_a_request_until_its_answer_ends(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    async def script(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, "application/json")
        started.set()
        await finish.wait()
        yield chunk(b"{}")

    neighbours.worker.scripts.append(script)
    in_flight = f"modelrunner_gateway_requests_in_flight{{route={CHAT_ROUTE}}}"
    pending = asyncio.create_task(client.post(CHAT, content=BODY))
    try:
        await asyncio.wait_for(started.wait(), 10)
        during = samples((await client.get("/metrics")).text)
    finally:
        finish.set()
        response = await pending
    after = samples((await client.get("/metrics")).text)

    assert response.status_code == 200
    assert during[in_flight] == 1
    assert after[in_flight] == 0


async def test_the_page_is_valid_with_the_gateways_and_the_runners_series(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, "text/event-stream", *STREAM))
    neighbours.scheduler.placements = [placement("worker-1", neighbours.worker_address)]
    neighbours.worker.metrics = [runner_metrics(31)]
    assert (await client.post(CHAT, content=STREAM_BODY)).status_code == 200

    response = await client.get("/metrics")

    assert response.status_code == 200
    text = response.text
    # The gateway's own families first, then the runners'; each family declared once.
    assert text.index("modelrunner_gateway_") < text.index("llamacpp:prompt_tokens_total")
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    assert lint_problems(response.content) == [
        "llamacpp:prompt_tokens_total metric names should not contain ':'"
    ]


async def test_disabled_metrics_leave_inference_working(
    settings: GatewaySettings, neighbours: Neighbours
) -> None:
    neighbours.worker.scripts.append(answer(200, "text/event-stream", *STREAM))
    async with asgi_client(dataclasses.replace(settings, metrics_enabled=False)) as client:
        streamed = await client.post(CHAT, content=STREAM_BODY)
        page = await client.get("/metrics")

    assert streamed.status_code == 200
    assert streamed.content == b"".join(STREAM)
    assert page.status_code == 404


# The fleet summary --------------------------------------------------------------------------------


def worker_status(worker_id: str, *, alive: bool, reserved: int) -> scheduler_pb2.WorkerStatus:
    return scheduler_pb2.WorkerStatus(
        worker=scheduler_pb2.WorkerInfo(worker_id=worker_id, memory_total_bytes=8 << 30),
        alive=alive,
        memory_reserved_bytes=reserved,
    )


async def test_the_page_summarizes_the_schedulers_fleet(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    loading = placement("worker-2", "127.0.0.1:1", state=common_pb2.RUNNER_STATE_STARTING)
    ready = placement("worker-1", neighbours.worker_address)
    ready.in_flight, ready.queued, loading.queued = 2, 3, 3
    neighbours.scheduler.placements = [ready, loading]
    neighbours.scheduler.workers = [
        worker_status("worker-1", alive=True, reserved=100),
        worker_status("worker-2", alive=True, reserved=200),
        worker_status("worker-9", alive=False, reserved=0),
    ]
    neighbours.worker.metrics = [runner_metrics(5)]

    response = await client.get("/metrics")

    assert response.status_code == 200
    page = samples(response.text)
    fleet = "modelrunner_gateway_fleet_"
    assert page[f"{fleet}runners{{model={MODEL},state=ready,worker=worker-1}}"] == 1
    assert page[f"{fleet}runners{{model={MODEL},state=starting,worker=worker-2}}"] == 1
    assert page[f"{fleet}runner_leases{{model={MODEL},worker=worker-1}}"] == 2
    # Every replica reports the model's one queue: it is not counted twice.
    assert page[f"{fleet}queued_requests{{model={MODEL}}}"] == 3
    assert page[f"{fleet}workers{{state=alive}}"] == 2
    assert page[f"{fleet}workers{{state=lost}}"] == 1
    assert page[f"{fleet}worker_memory_reserved_bytes{{worker=worker-2}}"] == 200
    assert page[f"{fleet}worker_memory_total_bytes{{worker=worker-1}}"] == 8 << 30
    # Only the READY runner's worker is scraped.
    assert neighbours.worker.scrapes == 1
    assert lint_problems(response.content) == [
        "llamacpp:prompt_tokens_total metric names should not contain ':'"
    ]


async def test_a_failing_worker_list_leaves_only_its_part_out(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.placements = [placement("worker-1", neighbours.worker_address)]
    neighbours.scheduler.workers_error = (grpc.StatusCode.INTERNAL, "boom")
    neighbours.worker.metrics = [runner_metrics(5)]

    response = await client.get("/metrics")

    assert response.status_code == 200
    page = samples(response.text)
    assert page[f"modelrunner_gateway_fleet_runners{{model={MODEL},state=ready,worker=worker-1}}"]
    assert not [name for name in page if name.startswith("modelrunner_gateway_fleet_workers")]
    assert "llamacpp:prompt_tokens_total{" in response.text
