"""Every command and variable that compose, Kubernetes and the images use is one the services
really accept: each variable is read by the settings of the process it is given to, and each
container, started locally with the same command and environment (addresses on loopback, paths
in a temporary directory), comes up healthy by its own health checks and does its job."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.env import env_tags
from services.stack.config import StackSettings
from services.stack.launcher import LocalStack
from tests.deploy.conftest import ROOT, ComposeConfig, Docs
from tests.deploy.contract import (
    RUNTIME_VARIABLES,
    Fleet,
    LocalContainer,
    running_fleet,
    variables_read,
)
from tests.deploy.deployments import (
    ContainerSpec,
    compose_containers,
    image_container,
    kubernetes_containers,
)
from tests.deploy.dockerfile import Dockerfile
from tests.support.processes import wait_for

BUNDLED_MODEL = "ai/smollm2:latest"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TARGETS = ("registry", "scheduler", "gateway", "worker", "model-init", "standalone")
_START_ORDER = ("registry", "scheduler", "worker", "gateway", "standalone")


@pytest.fixture(scope="module")
def all_specs(
    full_compose: dict[str, Any], rendered: dict[str, Docs], dockerfile: Dockerfile
) -> list[ContainerSpec]:
    specs = compose_containers(full_compose, dockerfile)
    for name, docs in rendered.items():
        specs += kubernetes_containers(docs, dockerfile, name)
    specs += [image_container(dockerfile, target) for target in IMAGE_TARGETS]
    return specs


@pytest.fixture(scope="module")
def gguf() -> Path:
    """The real SmolLM2 GGUF stands in for the one the images bundle, so the fleets serve."""
    path = Path(os.environ.get("MODEL_RUNNER_TEST_GGUF", ROOT / ".cache" / "models" / GGUF_NAME))
    if not path.is_file():
        pytest.fail(f"SmolLM2 GGUF not found at {path}: run `make model` (make test does)")
    return path.resolve()


def test_every_variable_is_read_by_the_process_it_is_given_to(
    all_specs: list[ContainerSpec],
) -> None:
    assert len({spec.source for spec in all_specs}) >= 20
    for spec in all_specs:
        given = set(spec.env) - RUNTIME_VARIABLES - spec.helpers
        unread = given - variables_read(spec.argv, spec.env)
        assert not unread, f"{spec.source} sets variables {spec.argv[0]} never reads: {unread}"


def test_an_unknown_or_misplaced_variable_is_caught() -> None:
    """The check above can fail: a misspelling, or a variable of another service."""
    read = variables_read(("model-runner-worker",), {"WORKER_TAG": "gpu", "MODELS_PATH": "/m"})
    assert "WORKER_TAG" not in read and "MODELS_PATH" not in read
    assert "WORKER_TAGS" in read


def test_helper_variables_are_only_referenced(all_specs: list[ContainerSpec]) -> None:
    helpers = {name for spec in all_specs for name in spec.helpers}
    assert helpers == {"POD_IP"}


def _by_start_order(specs: list[ContainerSpec]) -> list[ContainerSpec]:
    return sorted(
        (spec for spec in specs if not spec.one_shot),
        key=lambda spec: _START_ORDER.index(spec.target),
    )


def _start_all(
    fleet: Fleet, specs: list[ContainerSpec]
) -> tuple[list[LocalContainer], list[LocalContainer]]:
    """Start the long-running containers, wait until every health check passes; return them
    and the (localized, not yet run) one-shot containers."""
    fleet.plan(specs)
    services: list[LocalContainer] = []
    for index, spec in enumerate(_by_start_order(specs)):
        services.append(fleet.localize(spec, f"{spec.target}-{index}"))
    processes = [fleet.start(local) for local in services]
    for local, process in zip(services, processes, strict=True):
        fleet.wait_healthy(local, process)
    one_shots = [
        fleet.localize(spec, f"{spec.target}-once-{index}")
        for index, spec in enumerate(spec for spec in specs if spec.one_shot)
    ]
    return services, one_shots


def _get(url: str) -> Any:
    response = httpx.get(url, timeout=10.0, trust_env=False)
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:300]}"
    return response.json()


def _expect_workers(gateway: str, workers: list[LocalContainer]) -> None:
    """Every worker registered with the address, tags and memory its settings give it."""

    def rows() -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = _get(f"{gateway}/engines/workers")
        return answer

    wait_for(
        lambda: sum(row["alive"] for row in rows()) == len(workers),
        timeout=30,
        what=f"{len(workers)} workers alive",
    )
    registered = {row["address"]: row for row in rows()}
    for worker in workers:
        advertised = (
            worker.env.get("WORKER_ADVERTISE_ADDRESS") or worker.env["WORKER_LISTEN_ADDRESS"]
        )
        row = registered[advertised]
        assert env_tags(worker.env, "WORKER_TAGS").items() <= row["tags"].items(), row
        if worker.env.get("WORKER_MEMORY_BYTES"):
            assert row["memory_total_bytes"] == int(worker.env["WORKER_MEMORY_BYTES"]), row


def _expect_model(gateway: str, reference: str) -> None:
    tags = {tag for model in _get(f"{gateway}/models") for tag in model["tags"]}
    assert reference in tags, tags


def _expect_answer(gateway: str, workers: list[LocalContainer]) -> None:
    """A chat completion through the gateway: Assign, a worker fetching the blobs from the
    registry, llama-server loading them, the gateway streaming from the advertised address."""
    response = httpx.post(
        f"{gateway}/engines/v1/chat/completions",
        json={
            "model": "ai/smollm2",
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 4,
        },
        timeout=120.0,
        trust_env=False,
    )
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["content"]
    if workers:
        ids = {
            w.env.get("WORKER_ADVERTISE_ADDRESS") or w.env["WORKER_LISTEN_ADDRESS"] for w in workers
        }
        served = response.headers["X-Worker-Id"]
        rows = {row["worker_id"]: row["address"] for row in _get(f"{gateway}/engines/workers")}
        assert rows[served] in ids, (served, rows)


def _run_fleet(
    fleet: Fleet, specs: list[ContainerSpec]
) -> tuple[list[LocalContainer], list[LocalContainer]]:
    services, one_shots = _start_all(fleet, specs)
    (gateway,) = [local for local in services if local.spec.target == "gateway"]
    _expect_workers(gateway.gateway_url, [s for s in services if s.spec.target == "worker"])
    (seed,) = one_shots
    code, output = fleet.run_once(seed)
    assert code == 0, output
    assert "packaged" in output
    _expect_model(gateway.gateway_url, BUNDLED_MODEL)
    _expect_answer(gateway.gateway_url, [s for s in services if s.spec.target == "worker"])
    # A second start of the job (a restart, a later `up`) leaves the store alone.
    code, output = fleet.run_once(seed)
    assert code == 0 and "already in the store" in output, output
    return services, one_shots


@pytest.mark.integration
def test_compose_fleet_comes_up_and_serves_the_bundled_model(
    compose_config: ComposeConfig, dockerfile: Dockerfile, tmp_path: Path, gguf: Path
) -> None:
    """Every Model Runner service of the gpu profile (so both workers) and the model job."""
    specs = compose_containers(compose_config("gpu"), dockerfile)
    assert {spec.target for spec in specs} == {
        "registry",
        "scheduler",
        "worker",
        "gateway",
        "model-init",
    }
    assert sum(spec.target == "worker" for spec in specs) == 2
    with running_fleet(dockerfile, tmp_path / "fleet", gguf) as fleet:
        _run_fleet(fleet, specs)


@pytest.mark.integration
def test_kubernetes_pods_come_up_and_serve_the_bundled_model(
    rendered: dict[str, Docs], dockerfile: Dockerfile, tmp_path: Path, gguf: Path
) -> None:
    """The base's pods, one replica each, plus the GPU overlay's worker next to the CPU one."""
    base = kubernetes_containers(rendered["base"], dockerfile, "base")
    gpu_worker = [
        spec
        for spec in kubernetes_containers(rendered["overlays/gpu"], dockerfile, "overlays/gpu")
        if spec.target == "worker"
    ]
    specs = base + gpu_worker
    with running_fleet(dockerfile, tmp_path / "fleet", gguf) as fleet:
        services, _ = _run_fleet(fleet, specs)
    probes = {probe.kind for local in services for probe in local.probes}
    assert probes == {"grpc", "http"}


@pytest.mark.integration
def test_standalone_image_comes_up_with_the_bundled_model(
    dockerfile: Dockerfile, tmp_path: Path, gguf: Path
) -> None:
    """`make docker-run`: every service in one container via the stack launcher."""
    spec = image_container(dockerfile, "standalone")
    with running_fleet(dockerfile, tmp_path / "fleet", gguf) as fleet:
        (local,) = _start_all(fleet, [spec])[0]
        # The stack packages the bundled model before it opens the gateway.
        _expect_model(local.gateway_url, BUNDLED_MODEL)
        _expect_answer(local.gateway_url, [])
        wait_for(
            lambda: (
                [row["alive"] for row in _get(f"{local.gateway_url}/engines/workers")] == [True]
            ),
            timeout=30,
            what="the stack's worker alive",
        )


def _role_variables(stack: LocalStack) -> dict[str, set[str]]:
    return {service.name: set(service.env) for service in stack.services}


def test_the_local_launcher_uses_the_same_variables(
    full_compose: dict[str, Any], rendered: dict[str, Docs], dockerfile: Dockerfile
) -> None:
    """One source of truth: what `make run` sets for each service, compose and Kubernetes set
    too (except where a container derives it: compose workers advertise their host name)."""
    launcher = _role_variables(LocalStack(StackSettings.from_env({}), {}))
    derived: Mapping[str, set[str]] = {"compose": {"WORKER_ADVERTISE_ADDRESS"}, "kubernetes": set()}
    deployments = {
        "compose": compose_containers(full_compose, dockerfile),
        "kubernetes": kubernetes_containers(rendered["base"], dockerfile, "base"),
    }
    for kind, specs in deployments.items():
        for spec in specs:
            if spec.target not in launcher:
                continue
            missing = launcher[spec.target] - set(spec.env) - derived[kind]
            assert not missing, f"{spec.source} lacks {missing}, which `make run` sets"
