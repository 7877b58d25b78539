"""What every command gets from `run_cli`: settings, output streams and how to reach the gateway."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

import httpx
import typer
from rich.console import Console

from model_cli.client import GatewayClient
from model_cli.config import CliSettings
from services.common.clock import Clock

__all__ = ["CliState", "state_of"]


@dataclass(frozen=True)
class CliState:
    settings: CliSettings
    # Raw streams for answers and `--json` (never wrapped or styled) ...
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    # ... and rich consoles on the same streams for tables and progress.
    out: Console
    err: Console
    clock: Clock
    prog_name: str = "model-cli"
    # Tests put an httpx.MockTransport here in place of the gateway.
    transport: httpx.BaseTransport | None = None

    def client(self, *, max_connections: int = 16) -> GatewayClient:
        return GatewayClient(
            self.settings, transport=self.transport, max_connections=max_connections
        )

    def stdin_is_terminal(self) -> bool:
        try:
            return self.stdin.isatty()
        except ValueError:
            return False


def state_of(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    if not isinstance(state, CliState):
        raise RuntimeError("model-cli commands run through model_cli.app.run_cli")
    return state
