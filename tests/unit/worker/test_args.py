"""The llama-server argv builder: a pure function, tested as a table."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.worker.args import LaunchSpec, build_args

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
            id="context-size",
        ),
        pytest.param(LaunchSpec(MODEL, SOCK, context_size=0), BASE, id="context-size-unknown"),
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
            LaunchSpec(MODEL, SOCK, extra_args=("--ctx-size", "512")),
            [*BASE, "--ctx-size", "512"],
            id="llama-args-may-set-ctx-size",
        ),
    ],
)
def test_build_args(spec: LaunchSpec, expected: list[str]) -> None:
    assert build_args(spec) == expected


@pytest.mark.parametrize(
    "extra",
    [
        ("--model", "/other.gguf"),
        ("-m", "/other.gguf"),
        ("--host", "0.0.0.0"),
        ("--port", "8080"),
        ("--port=8080",),
        ("--model=/x",),
    ],
)
def test_extra_args_cannot_override_model_host_port(extra: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="may not set"):
        build_args(LaunchSpec(MODEL, SOCK, extra_args=extra))


def test_socket_path_must_end_in_sock() -> None:
    # llama-server treats --host as a Unix socket only when it ends in ".sock".
    with pytest.raises(ValueError, match=r"\.sock"):
        build_args(LaunchSpec(MODEL, Path("/tmp/runner")))
