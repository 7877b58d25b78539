"""Model management through the real CLI against the real stack: ls, inspect, tag, rm, status,
version, with `--json` outputs parsed and checked against the gateway's own answers."""

from __future__ import annotations

import httpx
import pytest

from services.stack.launcher import LocalStack
from tests.integration.cli.conftest import Cli, assert_one_line_error

pytestmark = pytest.mark.integration

MODEL = "ai/smollm2:latest"


def _gateway(stack: LocalStack, path: str) -> object:
    response = httpx.get(stack.gateway_url + path, timeout=30)
    response.raise_for_status()
    return response.json()


def test_list_in_every_format(cli: Cli, cli_stack: LocalStack) -> None:
    models = cli.json("ls", "--json")
    assert models == _gateway(cli_stack, "/models")
    (entry,) = [m for m in models if MODEL in m["tags"]]
    assert entry["id"].startswith("sha256:") and len(entry["id"]) == 71

    quiet = cli.ok("ls", "-q").split()
    assert entry["id"][7:19] in quiet

    table = cli.ok("list").splitlines()
    assert table[0].split()[:2] == ["MODEL", "NAME"]
    row = next(line for line in table if line.startswith(MODEL))
    assert entry["id"][7:19] in row
    assert entry["config"]["quantization"] in row

    openai = cli.json("ls", "--openai")
    assert openai["object"] == "list"
    assert MODEL in [m["id"] for m in openai["data"]]

    assert cli.json("ls", "--json", "no-such-model") == []


def test_inspect_by_name_partial_name_and_id(cli: Cli) -> None:
    full = cli.json("inspect", MODEL)
    assert MODEL in full["tags"]
    assert full["config"]["architecture"] == "llama"
    assert cli.json("inspect", "smollm2") == full
    assert cli.json("inspect", full["id"][7:19]) == full
    openai = cli.json("inspect", "--openai", "smollm2")
    assert openai["id"] == MODEL
    assert openai["object"] == "model"


def test_unknown_model_is_a_one_line_failure(cli: Cli) -> None:
    for args in (["inspect", "no-such-model"], ["rm", "no-such-model"], ["push", "no-such-model"]):
        line = assert_one_line_error(cli(*args))
        assert "not found" in line, args


def test_tag_then_remove_round_trip(cli: Cli) -> None:
    assert "ai/smollm2:cli-tag" in cli.ok("tag", "smollm2", "ai/smollm2:cli-tag")
    tags = cli.json("inspect", MODEL)["tags"]
    assert sorted(tags) == ["ai/smollm2:cli-tag", MODEL]

    model_id = cli.json("inspect", MODEL)["id"]
    conflict = assert_one_line_error(cli("rm", model_id[7:19]))
    assert "--force" in conflict

    removed = cli.ok("rm", "ai/smollm2:cli-tag")
    assert removed.splitlines() == ["Untagged: ai/smollm2:cli-tag"]
    assert cli.json("inspect", MODEL)["tags"] == [MODEL]


def test_status_and_version(cli: Cli, cli_stack: LocalStack) -> None:
    status = cli.json("status", "--json")
    assert status["running"] is True
    assert status["endpoint"] == cli_stack.gateway_url
    assert status["backends"] == _gateway(cli_stack, "/engines/status")
    assert "Model Runner is running" in cli.ok("status")

    version = cli.json("version", "--json")
    assert version["server"] == _gateway(cli_stack, "/version")
    assert version["client"]["version"]
