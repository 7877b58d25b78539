"""Helpers several commands share: transfers with progress, reference checks, plain output."""

from __future__ import annotations

from contextlib import closing

import typer
from rich.console import Console

from model_cli.client import GatewayClient
from model_cli.progress import show_transfer
from model_cli.state import CliState
from services.common.reference import InvalidReference, ModelReference, parse_reference

__all__ = [
    "checked_reference",
    "ensure_model",
    "print_line",
    "pull_with_progress",
    "push_with_progress",
]


def print_line(console: Console, text: str) -> None:
    """Text from the gateway, printed as is (no rich markup or highlighting)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def checked_reference(text: str, param: str) -> ModelReference:
    """A model reference validated before anything is sent; a usage error (exit 2) if invalid."""
    try:
        return parse_reference(text)
    except InvalidReference as exc:
        raise typer.BadParameter(f"invalid reference {text!r}: {exc}", param_hint=param) from None


def pull_with_progress(state: CliState, client: GatewayClient, model: str, console: Console) -> str:
    with closing(client.pull(model)) as events:
        return show_transfer(
            events,
            console,
            "pull",
            clock=state.clock,
            interval=state.settings.progress_interval,
        )


def push_with_progress(state: CliState, client: GatewayClient, model: str, console: Console) -> str:
    with closing(client.push(model)) as events:
        return show_transfer(
            events,
            console,
            "push",
            clock=state.clock,
            interval=state.settings.progress_interval,
        )


def ensure_model(state: CliState, client: GatewayClient, model: str) -> None:
    """DMR's `run`: pull a model the store does not have, progress on stderr (stdout is the answer)."""
    if client.has_model(model):
        return
    print_line(state.err, f"Unable to find model '{model}' locally. Pulling from the server.")
    print_line(state.err, pull_with_progress(state, client, model, state.err))
