"""The CLI's own version: the installed distribution's."""

from __future__ import annotations

import importlib.metadata

__all__ = ["DISTRIBUTION", "cli_version"]

DISTRIBUTION = "model-runner"


def cli_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"
