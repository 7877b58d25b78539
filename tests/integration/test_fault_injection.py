"""Issue 9: faults under load on the real chain (registry, scheduler, two workers with real
llama-servers and SmolLM2, gateway; all separate processes). Each scenario runs 4 streaming
clients for 24 requests, injects its fault while streams are in flight, and then checks that
every request is accounted for, none hung, none broke (each failure was a clean error), requests
succeed again after the fault, and the store still verifies.

The scenarios share one stack and run in file order; each leaves it whole again (what it killed
is restarted and a replica is ready on every worker) before the next starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.load import LoadPlan, Outcome
from tests.faults.pull import prepare_upstream_model, pull_injector
from tests.faults.scenarios import (
    ScenarioReport,
    kill_gateway,
    kill_llama_server,
    kill_scheduler,
    kill_worker,
    run_scenario,
)
from tests.faults.stack import MODEL, FaultStack, StackPlan, running_stack
from tests.integration.registry.conftest import running_registry

pytestmark = [pytest.mark.timeout(600), pytest.mark.replaces_module_process]

PLAN = LoadPlan(model=MODEL, clients=4, requests=24, max_tokens=32, idle_deadline=60.0)


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, gguf_path: Path
) -> AsyncIterator[FaultStack]:
    plan = StackPlan(root=tmp_path_factory.mktemp("faults"), gguf=gguf_path, shutdown_grace=10.0)
    async with running_stack(plan) as running:
        yield running


def _check(report: ScenarioReport) -> None:
    counts = report.counts()
    detail = "\n".join(f"{r.index} {r.outcome} {r.worker} {r.detail}" for r in report.results)
    assert len(report.results) == PLAN.requests, detail
    assert sorted(r.index for r in report.results) == list(range(PLAN.requests))
    assert counts[Outcome.HUNG] == 0, detail
    assert counts[Outcome.BROKEN] == 0, detail
    assert report.recovery is not None, f"nothing succeeded after the fault:\n{detail}"
    assert report.store_intact
    assert report.leases_left == 0, report.record.notes
    assert not report.record.orphans, report.record.notes
    assert report.record.clean, report.record.notes


async def test_kill_worker(stack: FaultStack) -> None:
    report = await run_scenario(stack, "kill -9 worker", PLAN, kill_worker)
    _check(report)
    # Only the streams on the killed worker failed: whatever started later went elsewhere.
    assert not report.failed_after_fault(), report.failed_after_fault()


async def test_kill_llama_server(stack: FaultStack) -> None:
    report = await run_scenario(stack, "kill -9 llama-server", PLAN, kill_llama_server)
    _check(report)
    assert not report.failed_after_fault(), report.failed_after_fault()


def _streams_finished_and_failures_are(report: ScenarioReport, text: str) -> None:
    """What was streaming at the fault finished; every failure's detail contains `text`."""
    streaming = report.in_flight_at_fault()
    assert streaming and all(r.outcome is Outcome.SUCCEEDED for r in streaming), streaming
    failed = [r.detail for r in report.results if r.outcome is Outcome.FAILED_CLEAN]
    assert all(text in detail for detail in failed), failed


async def test_kill_scheduler(stack: FaultStack) -> None:
    report = await run_scenario(stack, "kill -9 scheduler", PLAN, kill_scheduler)
    _check(report)
    # The scheduler is not in the token stream; until it was back, new requests got a 503.
    _streams_finished_and_failures_are(report, "503: ")


async def test_sigterm_gateway(stack: FaultStack) -> None:
    report = await run_scenario(stack, "SIGTERM gateway", PLAN, kill_gateway)
    _check(report)
    # Streams in flight drained within GATEWAY_SHUTDOWN_GRACE; new connections were refused
    # (a request sent on a keep-alive connection the old gateway closed is retried, and refused).
    _streams_finished_and_failures_are(report, "connection refused: ")


async def test_kill_registry_during_a_pull(stack: FaultStack, tmp_path: Path) -> None:
    with running_registry(tmp_path / "docker-registry") as upstream:
        reference = await prepare_upstream_model(stack, upstream.host, tmp_path)
        report = await run_scenario(
            stack, "kill -9 registry mid-pull", PLAN, pull_injector(reference)
        )
    _check(report)
    assert "pull killed mid-transfer ended with: error" in report.record.notes
    assert "pull after the restart: success" in report.record.notes
