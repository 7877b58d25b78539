"""The scripts the images carry: the health check (unhealthy answers, which address it checks)
and the model seed (waiting for the gateway under a deadline, refusing bad input). Their happy
paths run in test_contract.py against real services."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from model_cli.client import GatewayClient
from model_cli.config import CliSettings
from tests.deploy.conftest import ROOT
from tests.support.processes import free_port

HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"
SEED = ROOT / "deploy" / "docker" / "seed_model.py"
FETCH_COMPOSE = ROOT / "deploy" / "tools" / "fetch_compose.py"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load(HEALTHCHECK)
seed_model = _load(SEED)


@pytest.mark.parametrize(
    ("role", "variable"),
    [
        ("registry", "REGISTRY_LISTEN_ADDRESS"),
        ("scheduler", "SCHEDULER_LISTEN_ADDRESS"),
        ("worker", "WORKER_LISTEN_ADDRESS"),
    ],
)
def test_grpc_health_check_fails_when_nothing_answers(role: str, variable: str) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK), role, "--timeout", "0.3"],
        env={variable: f"0.0.0.0:{port}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "unhealthy" in result.stderr


def test_gateway_health_check_fails_when_nothing_answers() -> None:
    port = free_port()
    started = time.monotonic()
    code = healthcheck.main(
        ["gateway", "--timeout", "0.5"],
        {"MODEL_RUNNER_PORT": str(port), "GATEWAY_LISTEN_HOST": "0.0.0.0"},
    )
    assert code == 1
    assert time.monotonic() - started < 5


def test_health_check_reports_a_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["gateway"], {"MODEL_RUNNER_PORT": "not-a-port"}) == 1
    assert "MODEL_RUNNER_PORT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("listen", "checked"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:50053", "127.0.0.1:50053"),
        ("127.0.0.1:6000", "127.0.0.1:6000"),
        ("10.1.2.3:50052", "10.1.2.3:50052"),
    ],
)
def test_health_check_address(listen: str, checked: str) -> None:
    assert healthcheck.grpc_address(listen) == checked


def _client(port: int) -> GatewayClient:
    settings = CliSettings.from_env(
        {"MODEL_RUNNER_HOST": f"http://127.0.0.1:{port}", "MODEL_CLI_CONNECT_TIMEOUT": "1s"}
    )
    return GatewayClient(settings)


def test_seed_waits_for_the_gateway_under_a_deadline() -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    with _client(free_port()) as client, pytest.raises(seed_model.SeedError, match="waited 5s"):
        seed_model.wait_for_gateway(client, 5.0, clock=lambda: now[0], sleep=sleep)
    assert len(waits) == 5


def test_seed_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"MODEL_RUNNER_HOST": f"http://127.0.0.1:{free_port()}"}
    assert seed_model.main(["Not A Reference!"], env) == 1
    assert "Error:" in capsys.readouterr().err
    missing = tmp_path / "missing.gguf"
    assert seed_model.main(["ai/x", "--gguf", str(missing)], env) == 1
    assert str(missing) in capsys.readouterr().err
    assert seed_model.main(["ai/x", "--wait", "0"], env) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_fetched_compose_is_the_pinned_version(compose: Path) -> None:
    fetcher = _load(FETCH_COMPOSE)
    assert compose == fetcher.binary_path()
    version = subprocess.run(
        [str(compose), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == fetcher.COMPOSE_VERSION
    assert not fetcher._works(HEALTHCHECK)
