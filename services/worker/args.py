"""llama-server's command line for one runner: a pure function of what the runner needs.

Like DMR's `llamacpp_config.go` `GetArgs`. One process serves chat, completions and embeddings
(`--embeddings --pooling mean` does not stop it from generating), so a model needs one runner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.worker.errors import InvalidLoadOptionsError

__all__ = ["RESERVED_FLAGS", "LaunchSpec", "build_args", "check_model_args", "reserved_flag"]

# The worker owns where the model comes from and where llama-server listens, and the slots and
# context it is started with: the scheduler's memory estimate and the reported RunnerInfo depend
# on them, so neither LLAMA_ARGS nor a model's arguments may change them behind its back.
RESERVED_FLAGS = frozenset(
    {"--model", "-m", "--host", "--port", "--parallel", "-np", "--ctx-size", "-c"}
)


def reserved_flag(arg: str) -> bool:
    """True when `arg` sets one of RESERVED_FLAGS (`--port 1` or `--port=1`)."""
    return arg.split("=", 1)[0] in RESERVED_FLAGS


def _reserved_in(args: Iterable[str]) -> list[str]:
    return sorted({arg.split("=", 1)[0] for arg in args if reserved_flag(arg)})


def check_model_args(args: Sequence[str]) -> None:
    """InvalidLoadOptionsError when a model's llama-server arguments set a reserved flag."""
    reserved = _reserved_in(args)
    if reserved:
        raise InvalidLoadOptionsError(
            f"LoadRequest.llama_args may not set {', '.join(reserved)}: the worker sets "
            f"{', '.join(sorted(RESERVED_FLAGS))} itself (use context_size and parallel)"
        )


@dataclass(frozen=True)
class LaunchSpec:
    model_path: Path
    # llama-server listens on a Unix socket when --host ends in ".sock".
    socket_path: Path
    # Tokens per slot; 0: llama-server's default (the model's training context).
    context_size: int = 0
    # Slots (--parallel); 0: llama-server's default (automatic, with one KV cache shared by all).
    parallel: int = 0
    chat_template_path: Path | None = None
    # The name llama-server reports as `model` in answers and /v1/models; without it, the
    # cache path of the blob leaks to clients.
    alias: str = ""
    # 0: llama.cpp's default (every core).
    threads: int = 0
    # LLAMA_ARGS, the operator's arguments for every model.
    extra_args: Sequence[str] = ()
    # The model's own arguments (LoadRequest.llama_args): after LLAMA_ARGS, so they win.
    model_args: Sequence[str] = ()


def build_args(spec: LaunchSpec) -> list[str]:
    """argv after the binary. LLAMA_ARGS, then the model's arguments, come last so they win.

    With `parallel` set, llama-server splits --ctx-size evenly between its slots (an explicit
    slot count turns its unified KV cache off), so every slot gets `context_size` tokens.
    """
    if spec.socket_path.suffix != ".sock":
        raise ValueError(f"socket path must end in .sock, got {spec.socket_path}")
    reserved = _reserved_in([*spec.extra_args, *spec.model_args])
    if reserved:
        raise ValueError(f"extra llama-server arguments may not set {', '.join(reserved)}")
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
    if spec.parallel > 0:
        args += ["--parallel", str(spec.parallel)]
    if spec.context_size > 0:
        args += ["--ctx-size", str(spec.context_size * max(spec.parallel, 1))]
    if spec.chat_template_path is not None:
        args += ["--chat-template-file", str(spec.chat_template_path)]
    if spec.alias:
        args += ["--alias", spec.alias]
    if spec.threads > 0:
        args += ["--threads", str(spec.threads)]
    args += list(spec.extra_args)
    args += list(spec.model_args)
    return args
