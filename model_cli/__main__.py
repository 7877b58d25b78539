"""Entry point of `model-cli` (and of `docker model` when linked as the `docker-model` plugin)."""

from __future__ import annotations

import json
import os
import sys

from model_cli.plugin import parse_invocation, plugin_metadata
from model_cli.version import cli_version

__all__ = ["main"]


def main() -> None:
    invocation = parse_invocation(sys.argv)
    if invocation.metadata:
        # Docker asks this of every plugin on every listing: answer without importing the rest.
        print(json.dumps(plugin_metadata(cli_version())))
        sys.exit(0)
    from model_cli.app import run_cli

    code = run_cli(invocation.args, os.environ, prog_name=invocation.prog_name)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output left (`model-cli ls | head`); silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(code)


if __name__ == "__main__":
    main()
