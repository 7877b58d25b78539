"""`run` (one-shot, stdin, interactive on a terminal, Ctrl-C mid-answer, -d), ps/unload/df/
configure round trips and bench, through the real CLI, real llama-server and SmolLM2."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.common.env import parse_duration
from tests.integration.cli.conftest import Cli, assert_one_line_error
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration

MODEL = "ai/smollm2:latest"
PROMPT_LINE = r"\n> $"


def _rows(cli: Cli) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli.json("ps", "--json")
    return rows


def test_one_shot_streams_a_deterministic_answer(cli: Cli) -> None:
    args = ["run", "smollm2", "--temperature", "0", "--seed", "7", "--max-tokens", "16"]
    first = cli(*args, "What is the capital of France?")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    assert first.stdout.endswith("\n")
    assert first.stderr == ""
    # Temperature 0 reached llama-server: the same prompt gives the same answer.
    assert cli.ok(*args, "What is the capital of France?") == first.stdout


def test_prompt_from_stdin(cli: Cli) -> None:
    result = cli("run", "smollm2", "--max-tokens", "8", stdin="Say hello to me.\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_interactive_chat_on_a_terminal(cli: Cli) -> None:
    with cli.terminal("run", "smollm2", "--temperature", "0", "--max-tokens", "24") as term:
        term.expect(r"Interactive chat mode started")
        term.expect(PROMPT_LINE)
        mark = term.mark()
        term.send("What is 2+2?\n")
        answer = term.expect(r"What is 2\+2\?\n(?P<answer>.+?)\n> $", since=mark)
        assert answer.group("answer").strip()

        mark = term.mark()
        term.send('"""\nName one colour\nof the sky.\n"""\n')
        term.expect(r"\.\.\. ", since=mark)
        multi = term.expect(r'"""\n(?P<answer>.+?)\n> $', since=mark)
        assert multi.group("answer").strip()

        mark = term.mark()
        term.send("/nonsense\n")
        term.expect(r"Unknown command '/nonsense'", since=mark)
        term.expect(PROMPT_LINE, since=mark)
        term.send("/bye\n")
        assert term.wait() == 0


def test_ctrl_c_stops_the_answer_and_returns_to_the_prompt(cli: Cli) -> None:
    with cli.terminal("run", "smollm2", "--max-tokens", "4000") as term:
        term.expect(PROMPT_LINE)
        mark = term.mark()
        term.send("Write a very long story about a dragon and a knight.\n")
        # A few words of the answer have streamed in: the answer is under way.
        term.expect(r"knight\.\n\S+\s+\S+\s+\S+", since=mark)
        term.send("\x03")
        back = term.expect(PROMPT_LINE, since=mark, timeout=15)
        assert "Traceback" not in term.output
        # The stream was closed: the gateway released the request, nothing is generating.
        wait_for(
            lambda: all(row["in_flight"] == 0 for row in _rows(cli)),
            timeout=30,
            what="the interrupted request to be released",
        )
        mark = back.end()
        term.send("/clear\n")
        cleared = term.expect(r"Cleared the conversation", since=mark)
        # Ctrl-C at the prompt only discards the line; Ctrl-D leaves.
        term.expect(PROMPT_LINE, since=cleared.end())
        hint = term.interrupt_until(r"Use Ctrl \+ d or /bye to exit", since=cleared.end())
        term.expect(PROMPT_LINE, since=hint.end())
        term.send("\x04")
        assert term.wait() == 0


def test_detach_ps_unload_round_trip(cli: Cli) -> None:
    cli.ok("unload", "--all")
    assert _rows(cli) == []
    detached = cli("run", "-d", "smollm2")
    assert detached.returncode == 0, detached.stderr
    assert detached.stdout == ""

    (row,) = _rows(cli)
    assert row["model_name"] == MODEL
    assert row["state"] == "ready"
    assert row["in_flight"] == 0
    table = cli.ok("ps").splitlines()
    assert table[0].split()[:2] == ["MODEL", "NAME"]
    assert re.match(rf"{re.escape(MODEL)}\s+llama\.cpp\s+completion\s", table[1]), table

    assert cli.ok("unload", "smollm2").strip() == "Unloaded 1 model(s)."
    assert _rows(cli) == []
    assert cli.ok("unload", "--all").strip() == "Unloaded 0 model(s)."


def test_disk_usage(cli: Cli) -> None:
    usage = cli.json("df", "--json")
    # The store holds at least the bundled GGUF (98 MB).
    assert usage["models_disk_usage"] > 90_000_000
    assert isinstance(usage["workers"], list) and usage["workers"]
    table = cli.ok("df")
    assert re.search(r"^Models\s+\d+(\.\d+)?MB\s*$", table, re.MULTILINE), table


def test_workers(cli: Cli) -> None:
    (worker,) = cli.json("workers", "--json")
    assert (worker["alive"], worker["draining"]) == (True, False)
    assert worker["memory_total_bytes"] > 0
    table = cli.ok("workers").splitlines()
    assert table[0].split()[:3] == ["WORKER", "ADDRESS", "STATE"]
    assert table[1].split()[:3] == [worker["worker_id"], worker["address"], "alive"]


def test_configure_round_trip(cli: Cli) -> None:
    cli.ok(
        "configure",
        "smollm2",
        "--context-size",
        "2048",
        "--keep-alive",
        "10m",
        "--",
        "--temp",
        "0.3",
    )
    entries = cli.json("configure", "show", "--json")
    (entry,) = [e for e in entries if e["Model"] == MODEL]
    assert entry["ModelID"] == cli.json("inspect", MODEL)["id"]
    config = entry["Config"]
    assert config["context-size"] == 2048
    assert config["runtime-flags"] == ["--temp", "0.3"]
    assert parse_duration(config["keep_alive"]) == 600
    assert MODEL in cli.ok("configure", "show", "smollm2")

    # The model loads with its configuration: ps shows the keep-alive.
    cli.ok("run", "-d", "smollm2")
    (row,) = [r for r in _rows(cli) if r["model_name"] == MODEL]
    assert parse_duration(row["keep_alive"]) == 600
    cli.ok("unload", "--all")

    # llama-server flags the system owns are refused by the gateway, in one line.
    line = assert_one_line_error(cli("configure", "smollm2", "--", "--model", "/etc/passwd"))
    assert "--model" in line


def test_bench_measures_every_level(cli: Cli) -> None:
    report = cli.json(
        "bench", "smollm2", "--concurrency", "1,2", "--requests", "2", "--max-tokens", "8", "--json"
    )
    assert report["model"] == "smollm2"
    levels = report["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in levels:
        assert level["errors"] == 0, level
        assert level["requests"] == 2
        # ignore_eos: every request generates exactly max_tokens.
        assert level["tokens"] == 2 * 8
        assert level["tokens_per_second"] > 0
        assert 0 < level["ttft_p50_seconds"] <= level["ttft_p95_seconds"]
        assert level["ttft_p50_seconds"] <= level["latency_p50_seconds"]
