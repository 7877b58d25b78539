"""Observability of the whole stack, seen by a real Prometheus: the four services as processes,
real llama-server and SmolLM2, and Prometheus (Debian package `prometheus`) scraping the gateway's
`/metrics` and the registry's, scheduler's and worker's own metrics ports every second.

After a few chat requests (temperature 0, fixed seed), PromQL through Prometheus's HTTP API must
agree with what the client saw: one time-to-first-token observation per streamed request, token
counters equal to the sum of the `usage` the client got, requests by status. Each endpoint passes
`promtool check metrics`, and one request's id shows up in the logs of all four services."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.stack.launcher import LocalStack
from tests.integration.conftest import StackFactory
from tests.support.processes import free_port, stop_process, wait_until
from tests.unit.gateway.test_gateway_metrics import lint_problems
from tests.unit.promtool import check_metrics

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"
MODEL = "ai/smollm2:latest"
CHAT = "/engines/llama.cpp/v1/chat/completions"
BACKENDS = ("registry", "scheduler", "worker")
STREAMED = 3
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/model-runner.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "$worker": ".*"}
WHOLE = 1


@dataclass(frozen=True)
class Observed:
    stack: LocalStack
    # Job name -> host:port of its metrics endpoint (the gateway's is its HTTP port).
    targets: dict[str, str]


@pytest.fixture(scope="module")
async def observed(stack_factory: StackFactory) -> AsyncIterator[Observed]:
    backends = {service: f"127.0.0.1:{free_port()}" for service in BACKENDS}
    env = {f"{service.upper()}_METRICS_ADDRESS": address for service, address in backends.items()}
    # No resolve cache: every Assign asks the registry, so each request reaches all four.
    env |= {"LOG_FORMAT": "json", "SCHEDULER_RESOLVE_CACHE_TTL": "0"}
    async with stack_factory(env) as stack:
        gateway = f"{stack.settings.gateway_host}:{stack.settings.gateway_port}"
        yield Observed(stack=stack, targets={"gateway": gateway, **backends})


def _config(targets: dict[str, str]) -> str:
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
        for job, address in targets.items()
    )
    return (
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        f"scrape_configs:\n{jobs}"
    )


@pytest.fixture(scope="module")
def prometheus(observed: Observed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on a free port scraping the stack; yields its base URL."""
    if not Path(PROMETHEUS).is_file() or shutil.which("promtool") is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(_config(observed.targets))
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)
        log.close()


async def _ready(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/-/ready", timeout=2)).status_code == 200
    except httpx.TransportError:
        return False


async def _query(client: httpx.AsyncClient, url: str, promql: str) -> list[dict[str, Any]]:
    response = await client.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["status"] == "success", payload
    return list(payload["data"]["result"])


async def _scalar(client: httpx.AsyncClient, url: str, promql: str) -> float | None:
    result = await _query(client, url, promql)
    if not result:
        return None
    [series] = result
    return float(series["value"][1])


def _chat_body(prompt: str, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "ai/smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
        "temperature": 0.0,
        "seed": 42,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _streamed_usage(client: httpx.AsyncClient, prompt: str) -> dict[str, int]:
    usage: dict[str, int] | None = None
    async with client.stream("POST", CHAT, json=_chat_body(prompt, stream=True)) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[len("data: ") :])
                if event.get("usage"):
                    usage = event["usage"]
    assert usage is not None, "the stream ended without its usage event"
    return usage


def _gateway_panel_queries() -> list[tuple[str, str]]:
    """The Grafana dashboard's queries of the gateway's series, with Grafana's variables as they
    are when nothing is filtered (a rate over the whole test)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            expr = target["expr"]
            if "modelrunner_gateway_" in expr:
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append((f"{panel['title']} {target['refId']}", expr))
    assert len(queries) >= 6
    return queries


def _records(path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in path.read_text(errors="replace").splitlines()
        if line[:1] == "{"
    ]


async def test_prometheus_sees_what_the_client_saw(observed: Observed, prometheus: str) -> None:
    async with httpx.AsyncClient() as client:
        await wait_until(lambda: _ready(client, prometheus), what="Prometheus ready", timeout=60)

        usages = []
        async with httpx.AsyncClient(base_url=observed.stack.gateway_url, timeout=300) as gateway:
            for number in range(STREAMED):
                usages.append(await _streamed_usage(gateway, f"Count to {number + 2}."))
            for _ in range(WHOLE):
                whole = await gateway.post(CHAT, json=_chat_body("Say hi.", stream=False))
                assert whole.status_code == 200, whole.text
                usages.append(whole.json()["usage"])
            missing = await gateway.post(
                CHAT, json={**_chat_body("Hi", stream=False), "model": "ai/no-such-model"}
            )
            assert missing.status_code == 404, missing.text

        # Counted when each answer has ended, so a scrape that shows all of them shows the rest.
        answered = f'sum(modelrunner_gateway_requests_total{{route="{CHAT}"}})'

        async def scraped() -> bool:
            # Each target is scraped at its own offset within the interval: wait for all.
            targets_up = await _scalar(client, prometheus, "count(up == 1)")
            return targets_up == len(observed.targets) and (
                await _scalar(client, prometheus, answered) == STREAMED + WHOLE + 1
            )

        await wait_until(scraped, what="a scrape after the requests", timeout=30)

        up = await _query(client, prometheus, "up")
        assert {s["metric"]["job"]: s["value"][1] for s in up} == dict.fromkeys(
            observed.targets, "1"
        )

        async def value(promql: str) -> float | None:
            return await _scalar(client, prometheus, promql)

        model = f'model="{MODEL}"'
        # One first token per streamed request; a whole answer has none.
        assert (
            await value(f"modelrunner_gateway_time_to_first_token_seconds_count{{{model}}}")
            == STREAMED
        )
        # Tokens: exactly the usage the client was told.
        prompt_tokens = sum(usage["prompt_tokens"] for usage in usages)
        completion_tokens = sum(usage["completion_tokens"] for usage in usages)
        assert await value(f"modelrunner_gateway_prompt_tokens_total{{{model}}}") == prompt_tokens
        assert (
            await value(f"modelrunner_gateway_completion_tokens_total{{{model}}}")
            == completion_tokens
        )
        # Requests by status; the unknown model gets no model label (never the name as typed).
        by_status = await _query(
            client,
            prometheus,
            f'sum by (status, model) (modelrunner_gateway_requests_total{{route="{CHAT}"}})',
        )
        assert {
            (s["metric"]["status"], s["metric"].get("model", "")): float(s["value"][1])
            for s in by_status
        } == {("200", MODEL): STREAMED + WHOLE, ("404", ""): 1}
        # Sane latencies: first tokens within the request, gaps between tokens under a second.
        ttft_sum = await value(
            f"sum(modelrunner_gateway_time_to_first_token_seconds_sum{{{model}}})"
        )
        e2e_sum = await value(
            f'sum(modelrunner_gateway_request_duration_seconds_sum{{{model},route="{CHAT}"}})'
        )
        assert ttft_sum is not None and e2e_sum is not None
        assert 0 < ttft_sum < e2e_sum
        itl_count = await value(
            f"sum(modelrunner_gateway_inter_token_latency_seconds_count{{{model}}})"
        )
        itl_mean = await value(
            f"sum(modelrunner_gateway_inter_token_latency_seconds_sum{{{model}}}) / {itl_count}"
        )
        assert itl_count is not None and itl_count >= STREAMED
        assert itl_mean is not None and 0 < itl_mean < 1
        median = await value(
            "histogram_quantile(0.5, sum by (le) "
            f"(modelrunner_gateway_time_to_first_token_seconds_bucket{{{model}}}))"
        )
        assert median is not None and 0 < median < 60
        # Nothing in flight any more (the scrape in progress is not a chat request).
        assert await value(f'modelrunner_gateway_requests_in_flight{{route="{CHAT}"}}') == 0

        # llama-server's own counters, through the gateway, labelled by model and worker.
        llama = await _query(client, prometheus, 'llamacpp:prompt_tokens_total{job="gateway"}')
        [series] = llama
        assert series["metric"]["model"] == MODEL and series["metric"]["worker"]
        assert float(series["value"][1]) >= 1
        # The back end's own series, from their own ports.
        assert (
            await value('modelrunner_scheduler_assignments_total{outcome="assigned"}') or 0
        ) >= STREAMED + WHOLE
        assert await value('modelrunner_worker_runners{state="ready"}') == 1
        assert (await value("modelrunner_registry_store_blobs") or 0) >= 3

        # The scheduler's view of the fleet, summarized on the gateway's page.
        assert await value(f'modelrunner_gateway_fleet_runners{{{model},state="ready"}}') == 1
        assert await value('modelrunner_gateway_fleet_workers{state="alive"}') == 1

        # The dashboard's gateway panels (deploy/grafana) find their series.
        # Rates need two samples of a series inside their window: poll, the scrape is 1 s.
        for where, expr in _gateway_panel_queries():

            async def has_data(expr: str = expr) -> bool:
                return bool(await _query(client, prometheus, expr))

            await wait_until(has_data, what=f"data for the panel {where!r}: {expr}", timeout=30)


async def test_promtool_accepts_every_endpoint(observed: Observed) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for job, address in observed.targets.items():
            response = await client.get(f"http://{address}/metrics")
            assert response.status_code == 200, job
            if job == "gateway":
                # Only llama-server's own names draw remarks (a colon; a counter without
                # `_total`): DMR keeps them exactly as llama.cpp writes them.
                problems = lint_problems(response.content)
                assert all(line.startswith("llamacpp:") for line in problems), problems
                assert "modelrunner_gateway_requests_total" in response.text
            else:
                check_metrics(response.content)


async def test_one_request_id_in_the_logs_of_all_four_services(observed: Observed) -> None:
    request_id = f"prom-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(base_url=observed.stack.gateway_url, timeout=300) as gateway:
        response = await gateway.post(
            CHAT,
            json=_chat_body("Say hi.", stream=False),
            headers={"X-Request-ID": request_id},
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id

    logs = observed.stack.settings.log_dir

    def tagged(service: str) -> list[dict[str, Any]]:
        return [r for r in _records(logs / f"{service}.log") if r.get("request_id") == request_id]

    def everywhere() -> bool:
        return all(tagged(service) for service in ("gateway", *BACKENDS))

    # The worker releases the lease (and the scheduler logs it) just after the answer ends.
    await wait_until(everywhere, what=f"{request_id} in every service's log", timeout=10)
    for service in ("gateway", *BACKENDS):
        assert all(record["service"] == service for record in tagged(service))
    assert any(
        "/modelrunner.v1.Registry/InspectModel OK" in str(r["message"]) for r in tagged("registry")
    )
    assert any("/modelrunner.v1.Worker/Generate OK" in str(r["message"]) for r in tagged("worker"))
