"""Every failure path exits non-zero with one `Error: ...` line on stderr and no traceback:
an unreachable gateway, bad arguments, bad settings, missing logs; and the Docker plugin contract."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.cli.conftest import Cli, assert_one_line_error

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["inspect", "ai/smollm2"],
        ["pull", "ai/smollm2"],
        ["run", "ai/smollm2", "Hello"],
        ["ps"],
        ["df"],
        ["workers"],
        ["status"],
        ["unload", "--all"],
        ["configure", "ai/smollm2", "--context-size", "2048"],
        ["version"],
    ],
)
def test_unreachable_gateway_says_how_to_start_it(nowhere: Cli, args: list[str]) -> None:
    result = nowhere(*args)
    line = assert_one_line_error(result)
    host = nowhere.env["MODEL_RUNNER_HOST"]
    assert line == (
        f"Error: cannot reach Model Runner at {host}: start it with `make run` "
        "(or set MODEL_RUNNER_HOST)"
    )


def test_version_still_prints_the_client_when_the_gateway_is_down(nowhere: Cli) -> None:
    result = nowhere("version")
    assert_one_line_error(result)
    assert "Client:" in result.stdout
    assert "Version: unknown" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lss"], "No such command 'lss'"),
        (["run"], "Missing argument"),
        (["ls", "--bogus"], "No such option: --bogus"),
        (["unload"], "give the models to unload, or --all"),
        (["unload", "ai/smollm2", "--all"], "not both"),
        (["configure", "ai/smollm2"], "nothing to configure"),
        (["configure", "ai/smollm2", "--keep-alive", "5x"], "invalid duration '5x'"),
        (["configure", "ai/smollm2", "--context-size", "-5"], "--context-size"),
        (["bench", "ai/smollm2", "--concurrency", "0,2"], "positive integers"),
        (["tag", "ai/smollm2", "Bad//name"], "invalid reference"),
        (["pull", "UPPER/case"], "invalid reference"),
        (["package", "me/model:v1", "--gguf", "/does/not/exist.gguf"], "does not exist"),
        (["logs", "--service", "nope"], "unknown service 'nope'"),
        (["ls", "--openai", "-q"], "cannot be combined"),
    ],
)
def test_bad_arguments_are_usage_errors(nowhere: Cli, args: list[str], expected: str) -> None:
    """Exit 2, decided before anything is sent (nothing listens at the configured host)."""
    line = assert_one_line_error(nowhere(*args), code=2)
    assert expected in line


def test_bad_settings_fail_in_one_line(nowhere: Cli) -> None:
    line = assert_one_line_error(nowhere("ls", env={"MODEL_RUNNER_HOST": "ftp://example"}))
    assert "MODEL_RUNNER_HOST" in line
    line = assert_one_line_error(nowhere("ls", env={"MODEL_CLI_TIMEOUT": "soon"}))
    assert "MODEL_CLI_TIMEOUT" in line


def test_logs_without_a_log_directory_says_where_it_looked(nowhere: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "no-logs"
    line = assert_one_line_error(nowhere("logs", env={"MODEL_RUNNER_LOG_DIR": str(missing)}))
    assert f"no log directory at {missing}" in line
    assert "make run" in line


def test_bare_invocation_prints_help(nowhere: Cli) -> None:
    result = nowhere()
    assert result.returncode == 0, result.stderr
    for command in ("pull", "run", "list", "package", "bench", "configure", "logs"):
        assert command in result.stdout


def test_docker_cli_plugin_contract(nowhere: Cli, model_cli_script: Path, tmp_path: Path) -> None:
    """Linked as ~/.docker/cli-plugins/docker-model (what `make install` does), it answers the
    metadata probe, drops the `model` argument docker passes and calls itself `docker model`."""
    plugin = tmp_path / "cli-plugins" / "docker-model"
    plugin.parent.mkdir()
    plugin.symlink_to(model_cli_script)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(plugin), *args],
            env=nowhere.environ(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    metadata = run("docker-cli-plugin-metadata")
    assert metadata.returncode == 0, metadata.stderr
    parsed = json.loads(metadata.stdout)
    assert parsed["SchemaVersion"] == "0.1.0"
    assert parsed["Vendor"] == "Model Runner"
    assert parsed["Version"] and parsed["ShortDescription"]

    helped = run("model", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "docker model" in helped.stdout

    # `model` is stripped, so `ls` is the command: it fails only because nothing listens.
    line = assert_one_line_error(run("model", "ls"))
    assert "cannot reach Model Runner" in line
    usage = assert_one_line_error(run("model", "lss"), code=2)
    assert "docker model --help" in usage

    # Run directly, the console script is `model-cli` and takes no plugin argument.
    direct = subprocess.run(
        [str(model_cli_script), "model"],
        env=nowhere.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(direct, code=2)
