"""Docker CLI plugin protocol: `docker model ls` runs `~/.docker/cli-plugins/docker-model model ls`.

Docker asks every plugin for `docker-cli-plugin-metadata` (JSON on stdout) when it lists or runs
plugins, and passes the plugin's name as the first argument when it runs one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "METADATA_COMMAND",
    "PLUGIN_BINARY",
    "PLUGIN_NAME",
    "Invocation",
    "parse_invocation",
    "plugin_metadata",
]

PLUGIN_BINARY = "docker-model"
PLUGIN_NAME = "model"
METADATA_COMMAND = "docker-cli-plugin-metadata"
SCHEMA_VERSION = "0.1.0"


@dataclass(frozen=True)
class Invocation:
    args: list[str]
    prog_name: str
    metadata: bool = False


def parse_invocation(argv: Sequence[str]) -> Invocation:
    """What to run, from `sys.argv`: as `docker-model` (a plugin) the leading `model` docker
    passes is dropped and help says `docker model`; otherwise the program is `model-cli`."""
    as_plugin = bool(argv) and Path(argv[0]).name == PLUGIN_BINARY
    args = list(argv[1:])
    if args and args[0] == METADATA_COMMAND:
        return Invocation(args=[], prog_name=PLUGIN_BINARY, metadata=True)
    if as_plugin and args and args[0] == PLUGIN_NAME:
        args = args[1:]
    return Invocation(args=args, prog_name="docker model" if as_plugin else "model-cli")


def plugin_metadata(version: str) -> dict[str, str]:
    return {
        "SchemaVersion": SCHEMA_VERSION,
        "Vendor": "Model Runner",
        "Version": version,
        "ShortDescription": "Pull, run and serve AI models with Model Runner",
    }
