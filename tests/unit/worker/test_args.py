"""The llama-server argv builder: a pure function, tested as a table."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.worker.args import LaunchSpec, build_args, check_model_args
from services.worker.errors import InvalidLoadOptionsError

MODEL = Path("/cache/blobs/sha256/abc")
SOCK = Path("/tmp/mr/1-abc-1.sock")
BASE = [
    "--model",
    str(MODEL),
    "--host",
    str(SOCK),
    "--metrics",
    "--embeddings",
    "--pooling",
    "mean",
    "--jinja",
]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(LaunchSpec(MODEL, SOCK), BASE, id="defaults"),
        pytest.param(
            LaunchSpec(MODEL, SOCK, context_size=4096),
            [*BASE, "--ctx-size", "4096"],
            id="context-size-without-parallel-is-todays",
        ),
        pytest.param(LaunchSpec(MODEL, SOCK, context_size=0), BASE, id="context-size-unknown"),
        pytest.param(
            LaunchSpec(MODEL, SOCK, context_size=1024, parallel=2),
            [*BASE, "--parallel", "2", "--ctx-size", "2048"],
            id="context-is-per-slot",
        ),
        pytest.param(
            LaunchSpec(MODEL, SOCK, context_size=3000, parallel=1),
            [*BASE, "--parallel", "1", "--ctx-size", "3000"],
            id="one-slot",
        ),
        pytest.param(
            LaunchSpec(MODEL, SOCK, parallel=3),
            [*BASE, "--parallel", "3"],
            id="parallel-with-the-models-context",
        ),
        pytest.param(
            LaunchSpec(MODEL, SOCK, chat_template_path=Path("/cache/tpl")),
            [*BASE, "--chat-template-file", "/cache/tpl"],
            id="chat-template",
        ),
        pytest.param(
            LaunchSpec(MODEL, SOCK, context_size=2048, extra_args=("--threads", "2", "-ngl", "0")),
            [*BASE, "--ctx-size", "2048", "--threads", "2", "-ngl", "0"],
            id="llama-args-last-so-they-win",
        ),
        pytest.param(
            LaunchSpec(MODEL, SOCK, alias="ai/smollm2:latest"),
            [*BASE, "--alias", "ai/smollm2:latest"],
            id="alias",
        ),
        pytest.param(
            LaunchSpec(MODEL, SOCK, threads=1),
            [*BASE, "--threads", "1"],
            id="threads",
        ),
        pytest.param(
            LaunchSpec(MODEL, SOCK, threads=1, extra_args=("--threads", "4")),
            [*BASE, "--threads", "1", "--threads", "4"],
            id="llama-args-threads-come-later-and-win",
        ),
        pytest.param(
            LaunchSpec(
                MODEL,
                SOCK,
                threads=1,
                extra_args=("--threads", "4", "--temp", "0.5"),
                model_args=("--threads", "2", "--flash-attn", "on"),
            ),
            [
                *BASE,
                "--threads",
                "1",
                "--threads",
                "4",
                "--temp",
                "0.5",
                "--threads",
                "2",
                "--flash-attn",
                "on",
            ],
            id="model-args-after-llama-args-so-they-win",
        ),
    ],
)
def test_build_args(spec: LaunchSpec, expected: list[str]) -> None:
    assert build_args(spec) == expected


RESERVED = [
    ("--model", "/other.gguf"),
    ("-m", "/other.gguf"),
    ("--host", "0.0.0.0"),
    ("--port", "8080"),
    ("--port=8080",),
    ("--model=/x",),
    ("--parallel", "8"),
    ("-np", "8"),
    ("--parallel=8",),
    ("--ctx-size", "512"),
    ("-c", "512"),
    ("--ctx-size=512",),
]


@pytest.mark.parametrize("extra", RESERVED)
def test_extra_args_cannot_set_what_the_worker_owns(extra: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="may not set"):
        build_args(LaunchSpec(MODEL, SOCK, extra_args=extra))
    with pytest.raises(ValueError, match="may not set"):
        build_args(LaunchSpec(MODEL, SOCK, model_args=extra))


@pytest.mark.parametrize("extra", RESERVED)
def test_model_args_with_a_reserved_flag_are_a_typed_error(extra: tuple[str, ...]) -> None:
    flag = extra[0].split("=")[0]
    with pytest.raises(InvalidLoadOptionsError, match=f"may not set {flag}:"):
        check_model_args(("--temp", "0.1", *extra))


def test_model_args_without_reserved_flags_pass() -> None:
    # Flags that merely start like reserved ones are not reserved.
    check_model_args(("--temp", "0.1", "--cache-type-k", "q8_0", "-cb", "--ctx-checkpoints", "2"))


def test_socket_path_must_end_in_sock() -> None:
    # llama-server treats --host as a Unix socket only when it ends in ".sock".
    with pytest.raises(ValueError, match=r"\.sock"):
        build_args(LaunchSpec(MODEL, Path("/tmp/runner")))
