"""One source of truth: every variable the deployment files give a Model Runner container is a
row of the README's configuration table, and every knob of docker-compose.yml (its ${...}
variables) is documented in the README's compose section."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.conftest import ROOT, Docs
from tests.deploy.contract import RUNTIME_VARIABLES
from tests.deploy.deployments import compose_containers, image_container, kubernetes_containers
from tests.deploy.dockerfile import Dockerfile

README = ROOT / "README.md"
COMPOSE_SECTION = "## Run with Docker Compose"
_TABLE_ROW = re.compile(r"^\|(?P<names>[^|]+)\|", re.MULTILINE)
_NAME = re.compile(r"`([A-Z][A-Z0-9_]+)`")
_INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")


def configuration_table(readme: str) -> set[str]:
    """Names in the first column of the table under `## Configuration`."""
    start = readme.index("## Configuration")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end != -1 else None]
    return {name for row in _TABLE_ROW.finditer(section) for name in _NAME.findall(row["names"])}


def section(readme: str, heading: str) -> str:
    start = readme.find(heading)
    assert start != -1, f"README.md has no section {heading!r}"
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def test_the_table_parser_reads_rows() -> None:
    table = configuration_table(
        "## Configuration\n\n| variable | default |\n|---|---|\n| `A_B` / `C_D` | 1 |\n\n## Next\n"
        "| `E_F` | 2 |\n"
    )
    assert table == {"A_B", "C_D"}


def test_every_variable_the_deployments_set_is_documented(
    full_compose: dict[str, Any], rendered: dict[str, Docs], dockerfile: Dockerfile
) -> None:
    documented = configuration_table(README.read_text())
    specs = compose_containers(full_compose, dockerfile)
    for name, docs in rendered.items():
        specs += kubernetes_containers(docs, dockerfile, name)
    specs += [image_container(dockerfile, stage) for stage in ("standalone", "model-init")]
    for spec in specs:
        missing = set(spec.env) - RUNTIME_VARIABLES - spec.helpers - documented
        assert not missing, f"{spec.source}: not in the README's configuration table: {missing}"


def test_every_compose_knob_is_documented() -> None:
    knobs = set(_INTERPOLATION.findall((ROOT / "docker-compose.yml").read_text()))
    assert {"PORT", "MODEL_RUNNER_IMAGE", "MODEL_RUNNER_TAG"} <= knobs
    text = section(README.read_text(), COMPOSE_SECTION)
    missing = {knob for knob in knobs if f"`{knob}`" not in text}
    assert not missing, f"docker-compose.yml variables not in README '{COMPOSE_SECTION}': {missing}"


def test_readme_documents_kubernetes() -> None:
    text = section(README.read_text(), "## Run on Kubernetes")
    for path in ("deploy/kubernetes/base", "deploy/kubernetes/overlays/gpu"):
        assert path in text
        assert (ROOT / path / "kustomization.yaml").is_file()


def test_documented_paths_exist() -> None:
    for heading in (COMPOSE_SECTION, "## Run on Kubernetes"):
        for path in re.findall(r"`(deploy/[^`\s]+)`", section(README.read_text(), heading)):
            assert (ROOT / path).exists(), path
