"""Pull, push and package through the real CLI, against a real registry (CNCF distribution):
live per-layer bars on a terminal, throttled plain lines in a pipe, package then push then pull
into a second stack whose store is empty, and `run` pulling a model it does not have."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.stack.launcher import LocalStack
from tests.integration.cli.conftest import Cli, assert_one_line_error, isolated, stack_cli
from tests.integration.cli.terminal import ANSI
from tests.integration.conftest import StackFactory
from tests.integration.registry.conftest import DockerRegistry

pytestmark = pytest.mark.integration

PLAIN_PROGRESS = re.compile(
    r"^Downloading (?P<layer>[0-9a-f]{12}): (?P<done>[\d.]+ (?:bytes?|[kMG]B)) / "
    r"[\d.]+ (?:bytes?|[kMG]B) \((?P<percent>\d+)%\)$"
)


@pytest.fixture(scope="module")
async def empty_stack(
    stack_factory: StackFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    """A second stack with nothing in its store: every pull into it transfers every layer."""
    async with stack_factory(isolated(tmp_path_factory), bundled=False) as stack:
        yield stack


@pytest.fixture(scope="module")
def target(empty_stack: LocalStack) -> Cli:
    return stack_cli(empty_stack)


def test_push_on_a_terminal_shows_live_bars(cli: Cli, oci: DockerRegistry) -> None:
    remote = f"{oci.host}/cli/smollm2:v1"
    cli.ok("tag", "ai/smollm2", remote)
    with cli.terminal("push", remote) as term:
        term.expect(r"Model pushed successfully", timeout=120)
        assert term.wait() == 0
    # Live display: cursor control sequences, a bar, byte counts and a final state per layer.
    assert "\x1b[" in term.output
    clean = ANSI.sub("", term.output)
    assert "━" in clean
    assert re.search(r"Pushed\s+[0-9a-f]{12}\s", clean), clean[-2000:]
    assert re.search(r"\d+(\.\d+)?/\d+(\.\d+)? MB", clean), clean[-2000:]


def test_package_then_push(cli: Cli, oci: DockerRegistry, gguf_path: Path, tmp_path: Path) -> None:
    license_file = tmp_path / "LICENSE"
    license_file.write_text("Apache-2.0, for the test\n")
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    remote = f"{oci.host}/cli/packaged:v1"
    result = cli(
        "package",
        remote,
        "--gguf",
        str(gguf_path),
        "--license",
        str(license_file),
        "--chat-template",
        str(template),
        "--context-size",
        "4096",
        "--push",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not ANSI.search(result.stdout), "plain output expected in a pipe"
    assert any(line.startswith(f"Uploaded {gguf_path.name}: ") for line in lines), lines
    assert any(line.startswith(f"Model packaged as {remote} (") for line in lines), lines
    assert lines[-1].startswith("Model pushed successfully"), lines

    packaged = cli.json("inspect", remote)
    assert packaged["config"]["context_size"] == 4096
    assert remote in packaged["tags"]


def test_pull_in_plain_mode(target: Cli, oci: DockerRegistry) -> None:
    remote = f"{oci.host}/cli/packaged:v1"
    assert target.json("ls", "--json") == []
    # Interval 0: a line for every update the gateway sends, so the throttle is not what decides.
    result = target.with_env(MODEL_CLI_PROGRESS_INTERVAL="0")("pull", remote)
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[-1] == "Model pulled successfully"
    progress = [m for m in map(PLAIN_PROGRESS.match, lines) if m]
    by_layer: dict[str, list[int]] = {}
    for match in progress:
        by_layer.setdefault(match["layer"], []).append(int(match["percent"]))
    # The GGUF layer (98 MB) reports many times, in order; the small ones (license, template) too.
    weights, percents = max(by_layer.items(), key=lambda item: len(item[1]))
    assert len(percents) > 3, lines
    assert percents == sorted(percents)
    assert any(re.match(rf"^Downloaded {weights}: 98\.4 MB$", line) for line in lines), lines
    for layer in by_layer:
        assert any(line.startswith(f"Downloaded {layer}: ") for line in lines), (layer, lines)

    pulled = target.json("inspect", remote)
    assert pulled["config"]["context_size"] == 4096

    again = target.ok("pull", remote)
    assert again.strip().startswith("Using cached model")


def test_pull_throttles_plain_lines(target: Cli, oci: DockerRegistry) -> None:
    remote = f"{oci.host}/cli/packaged:v1"
    target.ok("rm", remote)
    result = target.with_env(MODEL_CLI_PROGRESS_INTERVAL="1h")("pull", remote)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    progress = [m for m in map(PLAIN_PROGRESS.match, lines) if m]
    # With an hour between lines, each layer says it started once and that it finished once.
    layers = [m["layer"] for m in progress]
    assert layers and len(layers) == len(set(layers)), lines
    assert all(any(line.startswith(f"Downloaded {layer}: ") for line in lines) for layer in layers)


def test_pull_on_a_terminal_shows_live_bars(target: Cli, oci: DockerRegistry) -> None:
    remote = f"{oci.host}/cli/packaged:v1"
    target.ok("rm", remote)
    with target.terminal("pull", remote) as term:
        term.expect(r"Model pulled successfully", timeout=120)
        assert term.wait() == 0
    assert "\x1b[" in term.output
    clean = ANSI.sub("", term.output)
    assert "━" in clean
    assert re.search(r"Downloaded\s+[0-9a-f]{12}\s", clean), clean[-2000:]
    assert re.search(r"MB/s|kB/s|GB/s", clean), clean[-2000:]


def test_run_pulls_a_missing_model_first(target: Cli, oci: DockerRegistry) -> None:
    remote = f"{oci.host}/cli/smollm2:v1"
    # Empty the store, so the pull has every layer to fetch.
    target.ok("rm", f"{oci.host}/cli/packaged:v1")
    assert target.json("ls", "--json") == []
    result = target("run", remote, "--max-tokens", "8", "Hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # Progress went to stderr, the answer alone to stdout.
    assert "Pulling from the server" in result.stderr
    assert "Model pulled successfully" in result.stderr
    assert "Downloaded" in result.stderr
    assert "Model pulled" not in result.stdout
    assert remote in target.json("inspect", remote)["tags"]


def test_unknown_remote_model_fails_in_one_line(target: Cli, oci: DockerRegistry) -> None:
    missing = f"{oci.host}/cli/nothing:v1"
    line = assert_one_line_error(target("pull", missing))
    assert "not found" in line, line
    # `run` says first that it is pulling (as `docker run` does), then fails in one line.
    result = target("run", missing, "Hi")
    assert result.returncode == 1
    notice, error = result.stderr.splitlines()
    assert notice.startswith(f"Unable to find model '{missing}' locally")
    assert error.startswith("Error: ") and "not found" in error
    assert "Traceback" not in result.stderr
