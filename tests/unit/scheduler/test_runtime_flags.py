from __future__ import annotations

import re
import subprocess

import pytest

from services.scheduler.errors import InvalidRequest
from services.scheduler.runtime_flags import (
    ALLOWED_FLAGS,
    MAX_LLAMA_ARG_CHARS,
    MAX_LLAMA_ARGS,
    RESERVED_FLAGS,
    cache_ram_bytes,
    parse_raw_flags,
    validate_llama_args,
)
from services.worker.binary import resolve_llama_server
from services.worker.errors import BinaryNotFoundError

ACCEPTED = [
    pytest.param(["--threads", "4"], id="flag value"),
    pytest.param(["--threads=4"], id="flag=value"),
    pytest.param(["-ngl", "99", "-fa", "on"], id="gpu and flash attention"),
    pytest.param(["--n-gpu-layers=all", "-sm", "row", "-ts", "3,1", "-mg", "0"], id="split"),
    pytest.param(["--device", "CUDA0,CUDA1", "--fit", "off"], id="device list"),
    pytest.param(["-ctk", "q8_0", "--cache-type-v=q4_0"], id="kv cache types"),
    pytest.param(["--jinja", "--no-webui", "-v"], id="switches"),
    pytest.param(["--temp", "0.7", "--top-p=0.9", "--seed", "-1"], id="negative number value"),
    pytest.param(["--yarn-ext-factor=-1.5", "--rope-scaling", "yarn"], id="negative inline"),
    pytest.param(["--reasoning-budget", "0", "--reasoning-format", "deepseek"], id="reasoning"),
    pytest.param(["--cont-batching", "--cache-reuse", "256", "--cache-ram", "1024"], id="cache"),
    pytest.param(["--spec-type", "ngram-simple", "--spec-draft-n-max", "16"], id="speculative"),
    pytest.param(["--load-mode", "mmap+mlock"], id="mlock"),
    pytest.param(["--chat-template-kwargs", '{"enable_thinking": false}'], id="json value"),
    pytest.param([], id="nothing"),
]


@pytest.mark.parametrize("args", ACCEPTED)
def test_accepted(args: list[str]) -> None:
    assert validate_llama_args(args) == tuple(args)


REFUSED = [
    pytest.param(["--model", "x.gguf"], "--model is set by the system", id="model"),
    pytest.param(["-m=x"], "-m is set by the system", id="short model inline"),
    pytest.param(["--host", "0.0.0.0"], "--host", id="host"),
    pytest.param(["--port=9"], "--port", id="port"),
    pytest.param(["--ctx-size", "8192"], "use context-size", id="ctx-size"),
    pytest.param(["-c", "8192"], "use context-size", id="short ctx-size"),
    pytest.param(["--parallel", "4"], "use parallel", id="parallel"),
    pytest.param(["-np=4"], "use parallel", id="short parallel inline"),
    pytest.param(["--kv-unified"], "sizes the KV cache per slot", id="unified kv"),
    pytest.param(["--alias", "x"], "--alias", id="alias"),
    pytest.param(["--metrics"], "--metrics", id="metrics"),
    pytest.param(["--embeddings"], "--embeddings", id="embeddings"),
    pytest.param(["--chat-template-file", "t.jinja"], "--chat-template-file", id="template file"),
    pytest.param(["-hf", "user/model"], "-hf", id="hugging face"),
    pytest.param(["--api-key", "k"], "--api-key", id="api key"),
    pytest.param(["--ssl-key-file", "k.pem"], "--ssl-key-file", id="ssl"),
    pytest.param(["--path", "static"], "--path", id="static path"),
    pytest.param(["--log-file", "log.txt"], "--log-file", id="log file"),
    pytest.param(["--trust-remote-code"], "is not allowed", id="unknown flag"),
    pytest.param(["--mlock"], "is not allowed", id="flag this build does not have"),
    pytest.param(["--lora", "adapter.gguf"], "is not allowed", id="lora path flag"),
    pytest.param(["--grammar-file", "g"], "is not allowed", id="file flag"),
    pytest.param(["-ot", "blk\\.0=CPU"], "file paths", id="backslash"),
    pytest.param(["--device=/dev/nvidia0"], "file paths", id="slash inline"),
    pytest.param(["--samplers", "a/b"], "file paths", id="slash value"),
    pytest.param(["--threads=-x"], "looks like a flag", id="inline value that is a flag"),
    pytest.param(["--threads=--port"], "looks like a flag", id="inline double dash"),
    pytest.param(["--threads", "--jinja"], "needs a value", id="value missing before flag"),
    pytest.param(["--threads"], "needs a value", id="value missing at end"),
    pytest.param(["--jinja=true"], "takes no value", id="switch with value"),
    pytest.param(["4"], "expected a flag", id="bare value"),
    pytest.param(["--threads", "4", "8"], "expected a flag", id="extra value"),
    pytest.param(["-ctk", "f32"], "must be one of", id="kv type beyond the estimate"),
    pytest.param(["-fa", "maybe"], "must be one of", id="bad choice"),
    pytest.param(["--cache-ram", "-1"], "whole number", id="unbounded prompt cache"),
    pytest.param(["--temp", "0.7\n--port"], "control characters", id="newline"),
    pytest.param(["--"], "expected a flag", id="double dash alone"),
]


@pytest.mark.parametrize(("args", "message"), REFUSED)
def test_refused(args: list[str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate_llama_args(args)


def test_unknown_flag_message_lists_allowed_ones() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_llama_args(["--frobnicate"])
    message = str(caught.value)
    assert "--frobnicate" in message
    assert "--threads" in message


def test_too_many_args() -> None:
    validate_llama_args(["--jinja"] * MAX_LLAMA_ARGS)
    with pytest.raises(InvalidRequest, match="at most"):
        validate_llama_args(["--jinja"] * (MAX_LLAMA_ARGS + 1))


def test_over_long_value() -> None:
    validate_llama_args(["--grammar", "x" * MAX_LLAMA_ARG_CHARS])
    with pytest.raises(InvalidRequest, match="longer than"):
        validate_llama_args(["--grammar", "x" * (MAX_LLAMA_ARG_CHARS + 1)])


def test_parse_raw_flags_splits_like_a_shell() -> None:
    assert parse_raw_flags("--threads 4  --chat-template-kwargs '{\"a\": 1}'") == (
        "--threads",
        "4",
        "--chat-template-kwargs",
        '{"a": 1}',
    )
    assert parse_raw_flags("") == ()


def test_parse_raw_flags_refuses_bad_quoting() -> None:
    with pytest.raises(InvalidRequest, match="cannot parse"):
        parse_raw_flags("--temp '0.5")


def test_cache_ram_bytes() -> None:
    assert cache_ram_bytes(["--jinja"]) is None
    assert cache_ram_bytes(["--cache-ram", "512"]) == 512 << 20
    assert cache_ram_bytes(["-cram=0", "--cache-ram=64"]) == 64 << 20


def test_reserved_and_allowed_do_not_overlap() -> None:
    assert not ALLOWED_FLAGS & set(RESERVED_FLAGS)


def _help_flags() -> set[str]:
    try:
        binary = resolve_llama_server(None)
    except BinaryNotFoundError as exc:
        pytest.skip(str(exc))
    text = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("-"):
            flags.update(re.findall(r"(?:^|[\s,])(--?[A-Za-z][\w.+-]*)", line))
    return flags


def test_every_allowed_and_reserved_flag_exists_in_llama_server() -> None:
    known = _help_flags()
    assert "--threads" in known
    assert sorted(ALLOWED_FLAGS - known) == []
    assert sorted(set(RESERVED_FLAGS) - known) == []
