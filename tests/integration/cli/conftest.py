"""Fixtures for driving the real `model-cli` as a subprocess against the real stack.

One stack (bundled SmolLM2) and one CNCF docker-registry serve every CLI test module, so the
whole package costs one model load per llama-server, not one per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.stack.launcher import LocalStack
from tests.integration.cli.terminal import Terminal
from tests.integration.conftest import ROOT, StackFactory
from tests.integration.registry.conftest import DockerRegistry, running_registry
from tests.support.processes import free_port

# Variables of the developer's shell that would point the CLI somewhere else.
_CLI_VARIABLES = ("MODEL_RUNNER_HOST", "MODEL_RUNNER_LOG_DIR")


@dataclass(frozen=True)
class Cli:
    """`python -m model_cli ...` with the environment of one stack."""

    env: Mapping[str, str]
    extra: Mapping[str, str] = field(default_factory=dict)

    def environ(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in _CLI_VARIABLES}
        return {**base, **self.env, **self.extra, **(overrides or {})}

    def __call__(
        self,
        *args: str,
        stdin: str = "",
        timeout: float = 180.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "model_cli", *args],
            env=self.environ(env),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def ok(self, *args: str) -> str:
        """stdout of a command that must succeed."""
        result = self(*args)
        assert result.returncode == 0, (args, result.returncode, result.stderr, result.stdout)
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args))

    def terminal(self, *args: str) -> Terminal:
        return Terminal(["-m", "model_cli", *args], self.environ(), cwd=ROOT)

    def with_env(self, **extra: str) -> Cli:
        return Cli(self.env, {**self.extra, **extra})


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The CLI's failure contract: exit code, one `Error: ...` line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr, result.stdout)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def stack_cli(stack: LocalStack) -> Cli:
    return Cli(
        {
            "MODEL_RUNNER_HOST": stack.gateway_url,
            "MODEL_RUNNER_LOG_DIR": str(stack.settings.log_dir),
        }
    )


def isolated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Stack settings that keep `configure` state out of the user's home."""
    state = tmp_path_factory.mktemp("scheduler-state") / "model-configs.json"
    return {"SCHEDULER_STATE_PATH": str(state)}


@pytest.fixture(scope="package")
async def cli_stack(
    stack_factory: StackFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    """The stack every CLI test module shares (bundled ai/smollm2)."""
    async with stack_factory(isolated(tmp_path_factory)) as stack:
        yield stack


@pytest.fixture(scope="package")
def cli(cli_stack: LocalStack) -> Cli:
    return stack_cli(cli_stack)


@pytest.fixture(scope="package")
def oci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    with running_registry(tmp_path_factory.mktemp("cli-oci")) as registry:
        yield registry


@pytest.fixture
def nowhere() -> Cli:
    """A CLI pointed at a port nothing listens on."""
    return Cli({"MODEL_RUNNER_HOST": f"http://127.0.0.1:{free_port()}"})


@pytest.fixture(scope="session")
def model_cli_script() -> Path:
    script = Path(sys.executable).parent / "model-cli"
    if not script.is_file():
        pytest.fail(f"{script} is missing: `make install` installs the console script")
    return script
