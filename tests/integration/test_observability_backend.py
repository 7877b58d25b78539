"""Observability of the back end on the real stack (registry, scheduler, worker as processes, real
llama-server and SmolLM2): a request id sent as `x-request-id` on Assign and Generate reaches the
scheduler's and the worker's JSON log lines (the worker's through the scheduler's Load call), and
each service's own /metrics endpoint serves its series, accepted by `promtool check metrics`.

The gateway's part (X-Request-ID in, aggregated /metrics) is tested with the gateway."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelrunner.v1 import (
    common_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from services.common.grpc_client import open_channel
from services.common.request_id import REQUEST_ID_KEY
from services.stack.launcher import LocalStack
from tests.integration.conftest import StackFactory
from tests.support.processes import free_port, wait_until
from tests.unit.promtool import check_metrics

pytestmark = pytest.mark.integration

MODEL = "ai/smollm2:latest"
SERVICES = ("registry", "scheduler", "worker")


@dataclass(frozen=True)
class Observed:
    stack: LocalStack
    metrics: dict[str, str]


@pytest.fixture(scope="module")
async def observed(stack_factory: StackFactory) -> AsyncIterator[Observed]:
    metrics = {service: f"127.0.0.1:{free_port()}" for service in SERVICES}
    env = {f"{service.upper()}_METRICS_ADDRESS": address for service, address in metrics.items()}
    # No resolve cache: every Assign asks the registry, so each request reaches all three.
    env |= {"LOG_FORMAT": "json", "SCHEDULER_RESOLVE_CACHE_TTL": "0"}
    async with stack_factory(env) as stack:
        yield Observed(stack=stack, metrics=metrics)


def _records(path: Path) -> list[dict[str, object]]:
    """Every JSON log line of a service's log file (other output, e.g. from grpc's C core, is
    skipped)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


async def _chat(observed: Observed, request_id: str) -> bytes:
    metadata = ((REQUEST_ID_KEY, request_id),)
    settings = observed.stack.settings
    async with open_channel(settings.scheduler_address) as channel:
        assignment = await scheduler_pb2_grpc.SchedulerStub(channel).Assign(
            scheduler_pb2.AssignRequest(model="smollm2"), metadata=metadata, timeout=120
        )
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, "stream": False}
    ).encode()
    async with open_channel(assignment.worker_address) as channel:
        call = worker_pb2_grpc.WorkerStub(channel).Generate(
            worker_pb2.GenerateRequest(
                request_id=request_id,
                model_id=assignment.model_id,
                endpoint=common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS,
                lease_id=assignment.lease_id,
                body=body,
            ),
            metadata=metadata,
            timeout=120,
        )
        messages = [message async for message in call]
    assert messages[0].head.status_code == 200
    return b"".join(message.chunk for message in messages[1:])


def _tagged(observed: Observed, service: str, request_id: str) -> list[str]:
    path = observed.stack.settings.log_dir / f"{service}.log"
    records = [r for r in _records(path) if r.get("request_id") == request_id]
    assert all(r["service"] == service and r["ts"] and r["level"] for r in records)
    return [str(r["message"]) for r in records]


async def test_a_request_id_reaches_every_backend_log(observed: Observed) -> None:
    request_id = f"obs-{uuid.uuid4().hex[:12]}"
    answer = json.loads(await _chat(observed, request_id))
    assert answer["choices"][0]["message"]["content"]
    scheduler = _tagged(observed, "scheduler", request_id)
    worker = _tagged(observed, "worker", request_id)
    registry = _tagged(observed, "registry", request_id)
    # Access lines: each call made for the request, including those the services made to each
    # other (scheduler -> registry InspectModel, worker -> scheduler Release).
    assert any(m.startswith("/modelrunner.v1.Scheduler/Assign OK") for m in scheduler)
    assert any(m.startswith("/modelrunner.v1.Scheduler/Release OK") for m in scheduler)
    assert any(m.startswith("/modelrunner.v1.Worker/Generate OK") for m in worker)
    assert any(m.startswith("/modelrunner.v1.Registry/InspectModel OK") for m in registry)
    # The cold load this request caused is logged under its id, on both sides of the Load call.
    assert any(m.startswith("loading ai/smollm2") for m in scheduler)
    assert any(m.startswith("/modelrunner.v1.Worker/Load OK") for m in worker)
    # Heartbeats and start-up carry no id: nothing leaks into unrelated lines.
    records = _records(observed.stack.settings.log_dir / "worker.log")
    assert any("request_id" not in record for record in records)


async def _scrape(client: httpx.AsyncClient, address: str) -> tuple[bytes, dict[str, float]]:
    response = await client.get(f"http://{address}/metrics", timeout=10)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return response.content, samples


async def test_each_service_serves_its_metrics(observed: Observed) -> None:
    await _chat(observed, f"obs-{uuid.uuid4().hex[:12]}")
    async with httpx.AsyncClient() as client:
        scraped = {
            service: await _scrape(client, address) for service, address in observed.metrics.items()
        }
        for body, samples in scraped.values():
            check_metrics(body)
            # Only the services' own series: no `_created` timestamps (left out in __main__).
            assert not [name for name in samples if "_created{" in name]

        _, scheduler = scraped["scheduler"]
        assert scheduler["modelrunner_scheduler_assignments_total{outcome=assigned}"] >= 1
        assert scheduler[f"modelrunner_scheduler_loads_total{{model={MODEL},outcome=ready}}"] == 1
        assert scheduler[f"modelrunner_scheduler_queue_depth{{model={MODEL}}}"] == 0
        assert scheduler[f"modelrunner_scheduler_replicas{{model={MODEL},state=ready}}"] == 1
        assert scheduler["modelrunner_scheduler_workers{state=alive}"] == 1
        assert scheduler["modelrunner_scheduler_assign_duration_seconds_count{}"] >= 1

        _, worker = scraped["worker"]
        assert worker["modelrunner_worker_runner_starts_total{outcome=ready}"] == 1
        assert worker["modelrunner_worker_runners{state=ready}"] == 1
        assert worker["modelrunner_worker_load_duration_seconds_count{}"] == 1
        assert worker["modelrunner_worker_blob_cache_bytes{}"] > 90_000_000

        _, registry = scraped["registry"]
        assert registry["modelrunner_registry_store_blobs{}"] >= 3
        assert registry["modelrunner_registry_store_size_bytes{}"] > 90_000_000
        assert registry["modelrunner_registry_packages_total{outcome=success,source=path}"] == 1

        # The lease was released: the scheduler's in-flight count goes back to 0.
        async def released() -> bool:
            _, samples = await _scrape(client, observed.metrics["scheduler"])
            return samples["modelrunner_scheduler_leases_in_flight{}"] == 0

        await wait_until(released, what="the lease release", timeout=10)
