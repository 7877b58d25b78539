"""The monitoring profile: Prometheus's scrape config checked by promtool, the Grafana dashboard's
queries parsed by Prometheus's own PromQL parser (promtool), its metric names checked against
what a real llama-server exports, and the provisioning wired to the compose mounts."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.worker.binary import resolve_llama_server
from tests.deploy.conftest import ROOT, run_tool
from tests.support.processes import free_port, stop_process, wait_for

PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "model-runner.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
_METRIC = re.compile(r"\bllamacpp:[a-z_]+")
# What Grafana substitutes before a query reaches Prometheus.
_GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$model": ".*",
    "$worker": ".*",
}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"panel {panel['id']} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ]


def test_promtool_accepts_the_scrape_config(promtool: Path) -> None:
    output = run_tool([str(promtool), "check", "config", str(PROMETHEUS_CONFIG)])
    assert "SUCCESS" in output


def test_prometheus_scrapes_the_gateway_of_the_compose_fleet(full_compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", ())
        for name in sd["names"]
    }
    gateway = full_compose["services"]["gateway"]["environment"]
    assert ("gateway", int(gateway["MODEL_RUNNER_PORT"])) in targets
    for name, _ in targets:
        assert name in full_compose["services"], name
    mounts = {v["source"]: v["target"] for v in full_compose["services"]["prometheus"]["volumes"]}
    assert mounts[str(PROMETHEUS_CONFIG)] in " ".join(
        full_compose["services"]["prometheus"]["command"]
    )


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = _queries(dashboard)
    assert len(queries) >= 10
    variables = {item["name"] for item in dashboard["templating"]["list"]}
    assert {"datasource", "model", "worker"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    # Each runner's series is labelled by model and worker: every query keeps those apart.
    for where, expr in queries:
        assert 'model=~"$model"' in expr and 'worker=~"$worker"' in expr, where


def test_dashboard_queries_parse_as_promql(promtool: Path, tmp_path: Path) -> None:
    rules = []
    for index, (_, expr) in enumerate(_queries(_dashboard())):
        for variable, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_tool([str(promtool), "check", "rules", str(path)])


def test_promtool_rejects_bad_promql(promtool: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad-rules.yml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "rate(x[)"}]}]}
        )
    )
    result = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, check=False
    )
    assert result.returncode != 0


def test_grafana_provisioning_matches_the_compose_mounts(full_compose: dict[str, Any]) -> None:
    grafana = full_compose["services"]["grafana"]
    mounts = {v["source"]: v["target"] for v in grafana["volumes"] if v["type"] == "bind"}
    assert mounts[str(PROVISIONING)] == "/etc/grafana/provisioning"
    dashboards_dir = mounts[str(DASHBOARD.parent)]
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "model-runner.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == dashboards_dir
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    datasource = next(
        item for item in _dashboard()["templating"]["list"] if item["name"] == "datasource"
    )
    assert datasource["current"]["value"] == source["uid"]


@pytest.fixture
def llama_metrics() -> Iterator[set[str]]:
    """Metric names a real llama-server (SmolLM2, --metrics) exports after one request."""
    gguf = Path(
        os.environ.get(
            "MODEL_RUNNER_TEST_GGUF", ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    )
    if not gguf.is_file():
        pytest.fail(f"SmolLM2 GGUF not found at {gguf}: run `make model` (make test does)")
    port = free_port()
    binary = resolve_llama_server(None)
    argv = [str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [*argv, "--metrics", "--ctx-size", "512", "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, f"llama-server exited with {process.returncode}"
        try:
            return httpx.get(f"{base}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=60, what="llama-server /health")
        httpx.post(
            f"{base}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60.0
        ).raise_for_status()
        text = httpx.get(f"{base}/metrics", timeout=10.0).text
        yield {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    finally:
        stop_process(process)


@pytest.mark.integration
def test_dashboard_metrics_are_exported_by_llama_server(llama_metrics: set[str]) -> None:
    used = {name for _, expr in _queries(_dashboard()) for name in _METRIC.findall(expr)}
    assert len(used) >= 8
    assert used <= llama_metrics, used - llama_metrics
