"""Commands run in-process through `run_cli` against the fake gateway: outputs, request bodies,
exit codes and the one-line error contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.unit.cli.conftest import FakeGateway, Invoke, Result, delta, ndjson, sse

MODEL_ID = "sha256:" + "0123456789ab" + "f" * 52
SMOLLM2: dict[str, Any] = {
    "id": MODEL_ID,
    "tags": ["ai/smollm2:latest", "ai/smollm2:v2"],
    "created": 1_800_000_000 - 3 * 3600,
    "config": {
        "format": "gguf",
        "quantization": "Q4_1",
        "parameters": "134.52M",
        "architecture": "llama",
        "size": "92.10MiB",
        "context_size": 8192,
    },
}


def one_line_error(result: Result, code: int = 1) -> str:
    assert result.code == code, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_ls_table_json_and_quiet(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("GET", "/models", [SMOLLM2])
    table = invoke("ls").stdout.splitlines()
    assert table[0].split() == [
        "MODEL", "NAME", "PARAMETERS", "QUANTIZATION", "ARCHITECTURE", "MODEL", "ID",
        "CREATED", "CONTEXT", "SIZE",
    ]  # fmt: skip
    assert table[1].split() == [
        "ai/smollm2:latest", "134.52M", "Q4_1", "llama", "0123456789ab", "3", "hours", "ago",
        "8192", "92.10MiB",
    ]  # fmt: skip
    assert table[2].startswith("ai/smollm2:v2 ")
    assert invoke("ls", "--json").json() == [SMOLLM2]
    assert invoke("ls", "-q").stdout == "0123456789ab\n"
    assert invoke("ls", "--json", "v2").json() == [SMOLLM2]
    assert invoke("ls", "--json", "other").json() == []


def test_ls_openai(gateway: FakeGateway, invoke: Invoke) -> None:
    listing = {"object": "list", "data": [{"id": "ai/smollm2:latest", "object": "model"}]}
    gateway.json("GET", "/engines/v1/models", listing)
    assert invoke("list", "--openai").json() == listing


def test_inspect_remote_asks_the_gateway_for_it(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("GET", "/models/ai/smollm2", SMOLLM2)
    assert invoke("inspect", "ai/smollm2", "--remote").json() == SMOLLM2
    assert gateway.requests[-1].url.params["remote"] == "true"


def test_unknown_model_is_one_line(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.error("GET", "/models/nope", 404, "model 'nope' not found")
    assert one_line_error(invoke("inspect", "nope")) == "Error: model 'nope' not found"


def test_multi_line_gateway_messages_become_one_line(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.error("GET", "/engines/ps", 502, "worker failed:\nllama-server said\n  no")
    assert one_line_error(invoke("ps")) == "Error: worker failed: llama-server said no"


def test_rm_prints_actions_and_hints_force(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("DELETE", "/models/ai/smollm2:v2", [{"Untagged": "ai/smollm2:v2"}])
    assert invoke("rm", "ai/smollm2:v2").stdout == "Untagged: ai/smollm2:v2\n"
    gateway.error("DELETE", "/models/0123456789ab", 409, "multiple tag references")
    assert one_line_error(invoke("rm", "0123456789ab")) == (
        "Error: multiple tag references (use --force)"
    )
    assert gateway.requests[-1].url.params["force"] == "false"


def test_tag_splits_the_target(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json(
        "POST", "/models/ai/smollm2/tag", {"message": 'Model tagged successfully with "x"'}, 201
    )
    result = invoke("tag", "ai/smollm2", "localhost:5000/team/model:v1")
    assert result.code == 0, result
    assert dict(gateway.requests[-1].url.params) == {
        "repo": "localhost:5000/team/model",
        "tag": "v1",
    }
    invoke("tag", "ai/smollm2", "smollm2-copy")
    assert dict(gateway.requests[-1].url.params) == {"repo": "ai/smollm2-copy", "tag": "latest"}
    assert one_line_error(invoke("tag", "ai/smollm2", "me/m@sha256:" + "a" * 64), code=2)


def test_pull_off_a_terminal_prints_plain_lines(gateway: FakeGateway, invoke: Invoke) -> None:
    lines = ndjson(
        {"type": "progress", "mode": "pull", "layer": {"id": "sha256:" + "9" * 64, "size": 2_000_000, "current": 0}},
        {"type": "progress", "mode": "pull", "layer": {"id": "sha256:" + "9" * 64, "size": 2_000_000, "current": 2_000_000}},
        {"type": "success", "message": "Model pulled successfully"},
    )  # fmt: skip
    gateway.route("POST", "/models/create", lambda _: httpx.Response(200, content=lines))
    result = invoke("pull", "ai/smollm2")
    assert result.code == 0, result
    assert result.stdout.splitlines() == [
        "Downloading 999999999999: 0 bytes / 2.0 MB (0%)",
        "Downloaded 999999999999: 2.0 MB",
        "Model pulled successfully",
    ]


def test_pull_failure_mid_stream(gateway: FakeGateway, invoke: Invoke) -> None:
    lines = ndjson({"type": "error", "message": "Error: registry unavailable: connection reset"})
    gateway.route("POST", "/models/create", lambda _: httpx.Response(200, content=lines))
    assert one_line_error(invoke("pull", "ai/smollm2")) == (
        "Error: registry unavailable: connection reset"
    )


def chat_route(gateway: FakeGateway, *texts: str) -> list[dict[str, Any]]:
    """Answers every chat request with `texts` as deltas; returns the bodies it was sent."""
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if request.headers.get("x-preload-only") == "true":
            return httpx.Response(200)
        return httpx.Response(200, content=sse(*(delta(t) for t in texts), "[DONE]"))

    gateway.route("POST", "/engines/v1/chat/completions", answer)
    return bodies


def test_run_one_shot(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("GET", "/models/ai/smollm2", SMOLLM2)
    bodies = chat_route(gateway, "Paris", " is the capital.")
    result = invoke(
        "run", "ai/smollm2", "--temperature", "0", "--seed", "3", "Capital", "of", "France?"
    )
    assert result == Result(0, "Paris is the capital.\n", "")
    (body,) = bodies
    assert body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert (body["temperature"], body["seed"], body["stream"]) == (0.0, 3, True)


def test_run_reads_the_prompt_from_stdin(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("GET", "/models/ai/smollm2", SMOLLM2)
    bodies = chat_route(gateway, "ok\n")
    assert invoke("run", "ai/smollm2", stdin="Summarize:\nline one\n").stdout == "ok\n"
    assert bodies[0]["messages"][0]["content"] == "Summarize:\nline one\n"
    assert one_line_error(invoke("run", "ai/smollm2", stdin="  \n")) == (
        "Error: no prompt: give one as an argument or on stdin"
    )


def test_run_pulls_a_missing_model_with_progress_on_stderr(
    gateway: FakeGateway, invoke: Invoke
) -> None:
    gateway.error("GET", "/models/me/m:v1", 404, "not found")
    pulled = ndjson({"type": "success", "message": "Model pulled successfully"})
    gateway.route("POST", "/models/create", lambda _: httpx.Response(200, content=pulled))
    chat_route(gateway, "hi")
    result = invoke("run", "me/m:v1", "Hello")
    assert result.code == 0, result
    assert result.stdout == "hi\n"
    assert result.stderr.splitlines() == [
        "Unable to find model 'me/m:v1' locally. Pulling from the server.",
        "Model pulled successfully",
    ]


def test_run_detached_only_loads(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("GET", "/models/ai/smollm2", SMOLLM2)
    bodies = chat_route(gateway, "never")
    result = invoke("run", "-d", "ai/smollm2")
    assert result.code == 0 and result.stdout == ""
    assert len(bodies) == 1
    assert gateway.requests[-1].headers["x-preload-only"] == "true"


def test_piped_stdin_is_a_prompt_not_a_chat(gateway: FakeGateway, invoke: Invoke) -> None:
    """The chat needs a terminal; piped text is sent as it is, even if it reads like `/bye`."""
    gateway.json("GET", "/models/ai/smollm2", SMOLLM2)
    bodies = chat_route(gateway, "answer")
    result = invoke("run", "ai/smollm2", stdin="/bye\n")
    assert result.stdout == "answer\n"
    assert bodies[0]["messages"][0]["content"] == "/bye\n"


def test_ps_df_status_version(gateway: FakeGateway, invoke: Invoke) -> None:
    row = {
        "backend_name": "llama.cpp",
        "model_name": "ai/smollm2:latest",
        "mode": "completion",
        "worker_id": "w1",
        "state": "ready",
        "in_flight": 1,
        "keep_alive": "5m0s",
        "expires_at": "2027-01-15T08:05:00.000Z",
    }
    gateway.json("GET", "/engines/ps", [row])
    ps = invoke("ps").stdout.splitlines()
    assert ps[1].split()[:6] == ["ai/smollm2:latest", "llama.cpp", "completion", "w1", "ready", "1"]
    assert invoke("ps", "--json").json() == [row]

    usage = {
        "models_disk_usage": 98_362_432,
        "default_backend_disk_usage": 0,
        "workers": [{"worker_id": "w1", "cache_bytes": 1_500_000}],
    }
    gateway.json("GET", "/engines/df", usage)
    df = invoke("df").stdout.splitlines()
    assert df[1].split() == ["Models", "98.36MB"]
    assert df[2].split() == ["Inference", "engine", "0B"]
    assert df[-1].split() == ["w1", "1.5MB"]
    assert invoke("df", "--json").json() == usage

    gateway.json("GET", "/engines/status", {"llama.cpp": "Running: llama.cpp"})
    assert invoke("status", "--json").json() == {
        "running": True,
        "endpoint": "http://gateway.test:12434",
        "backends": {"llama.cpp": "Running: llama.cpp"},
    }
    assert "llama.cpp: Running: llama.cpp" in invoke("status").stdout

    version = invoke("version", "--json").json()
    assert version["server"] == {"version": None}
    assert "Version: unknown" in invoke("version").stdout


def test_workers(gateway: FakeGateway, invoke: Invoke) -> None:
    row = {
        "worker_id": "w1",
        "address": "10.0.0.5:50053",
        "alive": True,
        "draining": True,
        "tags": {"accelerator": "cpu", "zone": "a"},
        "memory_total_bytes": 16_000_000_000,
        "memory_free_bytes": 10_000_000_000,
        "memory_reserved_bytes": 2_000_000_000,
        "cache_bytes": 0,
        "runners": 1,
        # The manual clock's wall time is 1.8e9: seen 3 seconds ago.
        "last_seen": 1_799_999_997,
    }
    dead = {"worker_id": "w2", "address": "", "alive": False, "draining": False, "tags": {}}
    gateway.json("GET", "/engines/workers", [row, dead])
    lines = invoke("workers").stdout.splitlines()
    assert lines[0].split()[:3] == ["WORKER", "ADDRESS", "STATE"]
    assert lines[1].split() == [
        "w1",
        "10.0.0.5:50053",
        "draining",
        "accelerator=cpu,zone=a",
        "10GB",
        "/",
        "16GB",
        "2GB",
        "1",
        "3",
        "seconds",
        "ago",
    ]
    assert lines[2].split()[:2] == ["w2", "dead"]
    assert lines[2].split()[-1] == "never"
    assert invoke("workers", "--json").json() == [row, dead]


def test_unload(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("POST", "/engines/unload", {"unloaded_runners": 1})
    assert invoke("unload", "ai/smollm2").stdout == "Unloaded 1 model(s).\n"
    assert json.loads(gateway.requests[-1].content) == {"all": False, "models": ["ai/smollm2"]}
    assert invoke("stop", "--all").code == 0
    assert json.loads(gateway.requests[-1].content) == {"all": True, "models": []}
    assert "or --all" in one_line_error(invoke("unload"), code=2)


def test_configure_sends_only_what_was_given(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.route("POST", "/engines/_configure", lambda _: httpx.Response(202))
    result = invoke(
        "configure", "ai/smollm2", "--context-size", "4096", "--keep-alive", "10m",
        "--require-tag", "gpu=h100", "--parallel", "2", "--", "--temp", "0.2", "--top-k", "5",
    )  # fmt: skip
    assert result.code == 0, result
    assert json.loads(gateway.requests[-1].content) == {
        "model": "ai/smollm2",
        "context-size": 4096,
        "keep_alive": "10m",
        "runtime-flags": ["--temp", "0.2", "--top-k", "5"],
        "parallel": 2,
        "required-tags": {"gpu": "h100"},
    }
    assert one_line_error(invoke("configure", "ai/smollm2", "-k"), code=2)
    bad = invoke("configure", "ai/smollm2", "--min-replicas", "3", "--max-replicas", "1")
    assert "above --max-replicas" in one_line_error(bad, code=2)
    sent = len(gateway.requests)
    assert one_line_error(invoke("configure", "ai/smollm2", "--require-tag", "=x"), code=2)
    assert len(gateway.requests) == sent


def test_configure_show(gateway: FakeGateway, invoke: Invoke) -> None:
    entries = [
        {"Backend": "llama.cpp", "Model": "ai/a:latest", "ModelID": MODEL_ID, "Mode": "completion", "Config": {"context-size": 512}},
        {"Backend": "llama.cpp", "Model": "ai/b:latest", "ModelID": MODEL_ID, "Mode": "completion", "Config": {}},
    ]  # fmt: skip
    gateway.json("GET", "/engines/_configure", entries)
    assert invoke("configure", "show", "--json").json() == entries
    assert invoke("configure", "show", "ai/b", "--json").json() == entries[1:]
    table = invoke("configure", "show").stdout.splitlines()
    assert table[1].split() == [
        "ai/a:latest",
        "0123456789ab",
        "llama.cpp",
        "completion",
        '{"context-size":512}',
    ]


def test_bench_runs_each_level(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("GET", "/models/ai/smollm2", SMOLLM2)
    usage = {"choices": [], "usage": {"completion_tokens": 4, "prompt_tokens": 9}}
    body = sse(delta("a"), delta("b"), usage, "[DONE]")
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=b"" if "x-preload-only" in request.headers else body)

    gateway.route("POST", "/engines/v1/chat/completions", answer)
    result = invoke("bench", "ai/smollm2", "-c", "1,3", "-n", "2", "--max-tokens", "4", "--json")
    assert result.code == 0, result
    report = result.json()
    assert [(lv["concurrency"], lv["requests"], lv["tokens"]) for lv in report["levels"]] == [
        (1, 2, 8),
        (3, 3, 12),
    ]
    # preload + warm-up + 2 + 3 requests, all temperature 0, the same seed and prompt.
    measured = bodies[1:]
    assert len(measured) == 6
    assert {(b["temperature"], b["seed"], b["max_tokens"], b["ignore_eos"]) for b in measured} == {
        (0.0, 42, 4, True)
    }
    table = invoke("bench", "ai/smollm2", "-c", "2", "-n", "1").stdout
    assert "TTFT P50" in table and "TOKENS/S" in table


def test_usage_errors_exit_2_in_one_line(invoke: Invoke) -> None:
    assert "No such command 'nope'" in one_line_error(invoke("nope"), code=2)
    assert "see 'model-cli run --help'" in one_line_error(invoke("run"), code=2)
    assert "positive integers" in one_line_error(invoke("bench", "m", "-c", "a"), code=2)


def test_bare_invocation_is_help(invoke: Invoke, capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke()
    assert result.code == 0
    assert "Usage" in capsys.readouterr().out + result.stdout


def test_bad_settings(invoke: Invoke) -> None:
    result = invoke("ls", env={"MODEL_RUNNER_HOST": "ftp://x"})
    assert "MODEL_RUNNER_HOST must be an http(s) URL" in one_line_error(result)


def test_purge_needs_force_without_a_terminal(gateway: FakeGateway, invoke: Invoke) -> None:
    assert "--force" in one_line_error(invoke("purge"))
    gateway.json("DELETE", "/models/purge", {"deleted_models": 2, "deleted_blobs": 5})
    assert invoke("purge", "-f").stdout == "Removed 2 model(s), 5 blob(s)\n"


def test_an_answer_that_breaks_off_ends_its_line(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("GET", "/models/ai/smollm2", SMOLLM2)
    body = sse(delta("Half an ans"), {"error": {"message": "worker failed: llama-server exited"}})
    gateway.route(
        "POST", "/engines/v1/chat/completions", lambda _: httpx.Response(200, content=body)
    )
    result = invoke("run", "ai/smollm2", "Hi")
    assert result.stdout == "Half an ans\n"
    assert one_line_error(result) == "Error: worker failed: llama-server exited"


def test_package_uploads_then_pushes(gateway: FakeGateway, invoke: Invoke, tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 2000)
    (tmp_path / "LICENSE").write_text("MIT")
    gateway.json("POST", "/models/package", {"id": MODEL_ID, "tags": ["me/tiny:v1"]}, 201)
    pushed = ndjson({"type": "success", "message": "Model pushed successfully (2.00 kB)"})
    gateway.route("POST", "/models/me/tiny:v1/push", lambda _: httpx.Response(200, content=pushed))
    result = invoke(
        "package", "me/tiny:v1", "--gguf", str(gguf), "--license", str(tmp_path / "LICENSE"),
        "--context-size", "512", "--push",
    )  # fmt: skip
    assert result.code == 0, result
    assert result.stdout.splitlines() == [
        "Uploaded tiny.gguf: 2.0 kB",
        "Model packaged as me/tiny:v1 (0123456789ab)",
        "Model pushed successfully (2.00 kB)",
    ]
    upload = gateway.sent("POST", "/models/package")[0]
    assert upload.url.params["context_size"] == "512"
    assert "x-model-chat-template" not in upload.headers
    # An invalid target is refused before a byte is sent.
    assert "invalid reference" in one_line_error(
        invoke("package", "Bad//x", "--gguf", str(gguf)), code=2
    )
    assert len(gateway.sent("POST", "/models/package")) == 1


def test_logs_command(invoke: Invoke, tmp_path: Path) -> None:
    (tmp_path / "gateway.log").write_text(
        "2026-01-01 10:00:00,000 INFO gateway a: one\n2026-01-01 10:00:01,000 INFO gateway a: two\n"
    )
    env = {"MODEL_RUNNER_LOG_DIR": str(tmp_path), "WORKER_RUNTIME_DIR": str(tmp_path / "rt")}
    result = invoke("logs", "--service", "gateway", "-n", "1", env=env)
    assert result == Result(0, "2026-01-01 10:00:01,000 INFO gateway a: two\n", "")
    missing = invoke("logs", env={"MODEL_RUNNER_LOG_DIR": str(tmp_path / "none")})
    assert "no log directory at" in one_line_error(missing)
