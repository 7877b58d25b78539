"""llama-server's command line for one runner: a pure function of what the runner needs.

Like DMR's `llamacpp_config.go` `GetArgs`. One process serves chat, completions and embeddings
(`--embeddings --pooling mean` does not stop it from generating), so a model needs one runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RESERVED_FLAGS", "LaunchSpec", "build_args", "reserved_flag"]

# The worker owns where the model comes from and where llama-server listens.
RESERVED_FLAGS = frozenset({"--model", "-m", "--host", "--port"})


def reserved_flag(arg: str) -> bool:
    """True when `arg` sets one of RESERVED_FLAGS (`--port 1` or `--port=1`)."""
    return arg.split("=", 1)[0] in RESERVED_FLAGS


@dataclass(frozen=True)
class LaunchSpec:
    model_path: Path
    # llama-server listens on a Unix socket when --host ends in ".sock".
    socket_path: Path
    # 0: llama-server's default (the model's training context).
    context_size: int = 0
    chat_template_path: Path | None = None
    # The name llama-server reports as `model` in answers and /v1/models; without it, the
    # cache path of the blob leaks to clients.
    alias: str = ""
    # 0: llama.cpp's default (every core).
    threads: int = 0
    extra_args: Sequence[str] = ()


def build_args(spec: LaunchSpec) -> list[str]:
    """argv after the binary. `extra_args` (LLAMA_ARGS) come last, so they win over defaults."""
    if spec.socket_path.suffix != ".sock":
        raise ValueError(f"socket path must end in .sock, got {spec.socket_path}")
    for arg in spec.extra_args:
        if reserved_flag(arg):
            raise ValueError(f"extra llama-server arguments may not set {arg.split('=')[0]}")
    args = [
        "--model",
        str(spec.model_path),
        "--host",
        str(spec.socket_path),
        "--metrics",
        "--embeddings",
        "--pooling",
        "mean",
        "--jinja",
    ]
    if spec.context_size > 0:
        args += ["--ctx-size", str(spec.context_size)]
    if spec.chat_template_path is not None:
        args += ["--chat-template-file", str(spec.chat_template_path)]
    if spec.alias:
        args += ["--alias", spec.alias]
    if spec.threads > 0:
        args += ["--threads", str(spec.threads)]
    args += list(spec.extra_args)
    return args
