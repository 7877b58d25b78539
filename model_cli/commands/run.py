"""`run MODEL [PROMPT]`: one-shot answer, prompt from stdin, interactive chat, or `-d` load only."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from model_cli.chat import ChatOptions, ChatSession, one_shot
from model_cli.commands.common import checked_reference, ensure_model, print_line
from model_cli.errors import InputError
from model_cli.state import CliState, state_of

__all__ = ["register"]


def _line_reader(state: CliState) -> Callable[[str], str]:
    """`input` with readline's line editing and in-session history when the chat is on the real
    terminal; readline is imported only then, since it writes escape sequences into pipes."""
    if state.stdin is sys.stdin and state.stdout is sys.stdout:
        import readline  # noqa: F401  (importing it is what enables editing and history)

        return input

    def read_line(prompt: str) -> str:
        state.stdout.write(prompt)
        state.stdout.flush()
        line = state.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read_line


def run(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model to run, e.g. ai/smollm2")],
    prompt: Annotated[
        list[str] | None, typer.Argument(help="Prompt; without one, an interactive chat")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Load the model and return")
    ] = False,
    temperature: Annotated[
        float | None, typer.Option("--temperature", min=0.0, help="Sampling temperature")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed")] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, help="Longest answer, in tokens")
    ] = None,
    system_prompt: Annotated[
        str | None, typer.Option("--system", help="System message sent first")
    ] = None,
) -> None:
    """Run a model: answer PROMPT, or chat when there is none (pulls the model if missing)."""
    checked_reference(model, "MODEL")
    state = state_of(ctx)
    options = ChatOptions(
        temperature=temperature, seed=seed, max_tokens=max_tokens, system=system_prompt
    )
    text = " ".join(prompt) if prompt else None
    if text is None and not detach and not state.stdin_is_terminal():
        text = state.stdin.read()
        if not text.strip():
            raise InputError("no prompt: give one as an argument or on stdin")
    with state.client() as client:
        ensure_model(state, client, model)
        if detach:
            client.preload(model)
            print_line(state.err, f"Model {model} loaded")
            return
        if text is not None:
            one_shot(client.stream_completion, model, text, options, state.stdout)
            return
        # Load before the first prompt, so a model that cannot start says so at once.
        client.preload(model)
        session = ChatSession(
            model=model,
            options=options,
            ask=client.stream_completion,
            read_line=_line_reader(state),
            out=state.stdout,
            err=state.stderr,
        )
        session.run()


def register(app: typer.Typer) -> None:
    app.command()(run)
