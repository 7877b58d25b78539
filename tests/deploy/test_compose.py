"""docker-compose.yml, through Docker Compose v2's own loader and validator (`config`), then the
properties the fleet relies on: scalable workers, health-ordered start, GPU and monitoring
profiles, addresses that point at a service listening there, and images built from the
Dockerfile targets whose commands and health checks they repeat."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import (
    COMPOSE_PROFILES,
    ROOT,
    ComposeConfig,
    compose_env,
)
from tests.deploy.dockerfile import Dockerfile

MODEL_RUNNER_SERVICES = {"registry", "scheduler", "worker", "worker-gpu", "gateway"}


def _ours(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in config["services"].items()
        if "target" in (service.get("build") or {})
    }


@pytest.mark.parametrize(
    "profiles",
    [
        combo
        for n in range(len(COMPOSE_PROFILES) + 1)
        for combo in itertools.combinations(COMPOSE_PROFILES, n)
    ],
    ids=lambda p: "+".join(p) or "default",
)
def test_compose_validates_the_file(
    compose_config: ComposeConfig, profiles: tuple[str, ...]
) -> None:
    config = compose_config(*profiles)
    expected = {"registry", "scheduler", "worker", "gateway", "model-init"}
    if "gpu" in profiles:
        expected.add("worker-gpu")
    if "monitoring" in profiles:
        expected |= {"prometheus", "grafana"}
    assert set(config["services"]) == expected


def test_compose_rejects_an_invalid_file(compose: Path, tmp_path: Path) -> None:
    """The validation is real: a bad duration, an unknown condition, a misspelled key fail."""
    text = (ROOT / "docker-compose.yml").read_text()
    for broken in (
        text.replace("stop_grace_period: 60s", "stop_grace_period: sixty", 1),
        text.replace("condition: service_healthy", "condition: service_happy", 1),
        text.replace("    healthcheck:\n", "    healthchek:\n", 1),
    ):
        path = tmp_path / "docker-compose.yml"
        path.write_text(broken)
        result = subprocess.run(
            [str(compose), "--project-directory", str(ROOT), "-f", str(path), "config", "-q"],
            capture_output=True,
            text=True,
            env=compose_env(tmp_path),
            check=False,
        )
        assert result.returncode != 0, broken[:200]


def test_no_host_networking_and_every_service_restarts(full_compose: dict[str, Any]) -> None:
    for name, service in full_compose["services"].items():
        assert "network_mode" not in service, name
        assert service.get("restart") in {"unless-stopped", "always"} or str(
            service.get("restart")
        ).startswith("on-failure"), name
        assert not service.get("privileged"), name


def test_model_runner_services_are_health_checked_and_start_in_order(
    full_compose: dict[str, Any],
) -> None:
    services = _ours(full_compose)
    assert set(services) == MODEL_RUNNER_SERVICES | {"model-init"}
    for name in MODEL_RUNNER_SERVICES:
        assert services[name]["healthcheck"]["test"][:2] == ["CMD", "model-runner-healthcheck"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"
    assert set(services["gateway"]["depends_on"]) == {"registry", "scheduler"}
    assert set(services["worker"]["depends_on"]) == {"registry", "scheduler"}
    assert set(services["model-init"]["depends_on"]) == {"gateway"}


def test_workers_scale(full_compose: dict[str, Any]) -> None:
    """Nothing pins a worker replica: no fixed name, host name, published port or shared cache,
    and each registers its own address (wildcard listen host -> its container host name)."""
    for name in ("worker", "worker-gpu"):
        worker = full_compose["services"][name]
        for pinned in ("container_name", "hostname", "ports"):
            assert not worker.get(pinned), f"{name}: {pinned}"
        env = worker["environment"]
        assert env["WORKER_LISTEN_ADDRESS"].startswith("0.0.0.0:")
        assert "WORKER_ADVERTISE_ADDRESS" not in env
        cache = [v for v in worker["volumes"] if v["target"] == env["WORKER_CACHE_PATH"]]
        assert cache and cache[0]["type"] == "volume" and not cache[0].get("source"), cache


def test_gateway_published_on_loopback_port_8080_by_default(
    compose_config: ComposeConfig,
) -> None:
    (port,) = compose_config()["services"]["gateway"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "8080", 12434)
    moved = compose_config(env={"PORT": "9000", "MODEL_RUNNER_BIND": "0.0.0.0"})
    (port,) = moved["services"]["gateway"]["ports"]
    assert (port["host_ip"], port["published"]) == ("0.0.0.0", "9000")


def test_only_the_gateway_and_monitoring_publish_ports(full_compose: dict[str, Any]) -> None:
    published = {name for name, s in full_compose["services"].items() if s.get("ports")}
    assert published == {"gateway", "prometheus", "grafana"}


def test_gpu_profile(full_compose: dict[str, Any], compose_config: ComposeConfig) -> None:
    assert "worker-gpu" not in compose_config()["services"]
    gpu = full_compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["LLAMA_SERVER_VARIANT"] == "cuda"
    assert gpu["image"].endswith("-cuda")
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "gpu=" in gpu["environment"]["WORKER_TAGS"]
    cpu = full_compose["services"]["worker"]
    assert cpu["build"]["args"]["LLAMA_SERVER_VARIANT"] == "cpu"
    assert "deploy" not in cpu


def test_monitoring_profile_mounts_files_that_exist(full_compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        service = full_compose["services"][name]
        assert service["profiles"] == ["monitoring"]
        binds = [v for v in service["volumes"] if v["type"] == "bind"]
        assert binds, name
        for bind in binds:
            assert Path(bind["source"]).exists(), bind["source"]
            assert bind.get("read_only"), bind


def test_addresses_point_at_a_service_listening_there(full_compose: dict[str, Any]) -> None:
    services = full_compose["services"]
    listening: dict[str, set[int]] = {}
    for name, service in _ours(full_compose).items():
        env = service.get("environment") or {}
        ports = {
            int(value.rpartition(":")[2])
            for key, value in env.items()
            if key.endswith("_LISTEN_ADDRESS")
        }
        if "MODEL_RUNNER_PORT" in env:
            ports.add(int(env["MODEL_RUNNER_PORT"]))
        listening[name] = ports
    for name, service in _ours(full_compose).items():
        for key, value in (service.get("environment") or {}).items():
            if key in {"REGISTRY_ADDRESS", "SCHEDULER_ADDRESS"}:
                host, _, port = value.rpartition(":")
            elif key == "MODEL_RUNNER_HOST":
                host, _, port = value.removeprefix("http://").rpartition(":")
            else:
                continue
            assert host in services, f"{name}: {key}={value}: no service {host}"
            assert int(port) in listening[host], (
                f"{name}: {key}={value}: {host} listens on {listening[host]}"
            )
            assert host in (service.get("depends_on") or {}), f"{name} dials {host} unwaited"


def test_services_listen_on_every_interface_of_their_container(
    full_compose: dict[str, Any],
) -> None:
    """Peers reach a service through the project network, never its loopback."""
    for name, service in _ours(full_compose).items():
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_LISTEN_ADDRESS"):
                assert value.rpartition(":")[0] == "0.0.0.0", f"{name}: {key}={value}"
            elif key == "GATEWAY_LISTEN_HOST":
                assert value == "0.0.0.0", f"{name}: {key}={value}"


def test_commands_and_health_checks_repeat_the_image(
    full_compose: dict[str, Any], dockerfile: Dockerfile
) -> None:
    for name, service in _ours(full_compose).items():
        build = service["build"]
        image = dockerfile.target(build["target"], build.get("args") or {})
        assert tuple(service["command"]) == image.cmd, name
        if "healthcheck" in service:
            assert tuple(service["healthcheck"]["test"][1:]) == image.healthcheck, name
        assert service["image"].rsplit("/", 1)[1].split(":")[0] == build["target"], name


def test_data_lives_on_volumes(full_compose: dict[str, Any]) -> None:
    services = full_compose["services"]
    for name, variable in (("registry", "MODELS_PATH"), ("scheduler", "SCHEDULER_STATE_PATH")):
        path = services[name]["environment"][variable]
        mounts = [v for v in services[name]["volumes"] if path.startswith(v["target"])]
        assert mounts and mounts[0]["type"] == "volume", name
        assert mounts[0]["source"] in full_compose["volumes"], name
