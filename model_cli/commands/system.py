"""version and logs."""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated

import typer

from model_cli.commands.common import print_line
from model_cli.errors import GatewayUnreachable
from model_cli.logs import ENGINE, SERVICES, LogFollower, history, log_sources, read_source
from model_cli.render import print_json
from model_cli.state import state_of
from model_cli.version import cli_version

__all__ = ["register"]

_SERVICE_NAMES = (*SERVICES, ENGINE)


def version(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show the CLI's version and the gateway's."""
    state = state_of(ctx)
    client_version = cli_version()
    server_version: str | None = None
    unreachable: GatewayUnreachable | None = None
    with state.client() as client:
        try:
            server_version = client.version()
        except GatewayUnreachable as exc:
            unreachable = exc
    if as_json:
        print_json(
            {"client": {"version": client_version}, "server": {"version": server_version}},
            state.stdout,
        )
    else:
        print_line(state.out, f"Client:\n Version: {client_version}")
        print_line(
            state.out, f"Server ({client.base_url}):\n Version: {server_version or 'unknown'}"
        )
    if unreachable is not None:
        raise unreachable


def _check_services(names: list[str]) -> list[str]:
    for name in names:
        if name not in _SERVICE_NAMES:
            raise typer.BadParameter(
                f"unknown service {name!r}; choose from {', '.join(_SERVICE_NAMES)}",
                param_hint="--service",
            )
    return names


def logs(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines")] = False,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            "-s",
            help=f"Only this service ({', '.join(_SERVICE_NAMES)}); repeatable",
        ),
    ] = None,
    no_engines: Annotated[
        bool, typer.Option("--no-engines", help="Leave out llama-server logs")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=0, help="Only the last N lines so far")
    ] = None,
) -> None:
    """Show the local stack's logs (MODEL_RUNNER_LOG_DIR, llama-server logs included)."""
    state = state_of(ctx)
    settings = state.settings
    names = _check_services(service or [])
    find = partial(
        log_sources, settings.log_dir, settings.runtime_dir, names, engines=not no_engines
    )
    sources = find()
    contents = [(source, *read_source(source)) for source in sources]
    for line in history([(source, lines) for source, lines, _ in contents], tail=tail):
        state.stdout.write(line + "\n")
    state.stdout.flush()
    if not follow:
        return
    offsets = {source.path: end for source, _, end in contents}
    follower = LogFollower(list(sources), offsets, discover=find, out=state.stdout)
    try:
        follower.follow(partial(time.sleep, settings.log_poll_interval))
    except KeyboardInterrupt:
        # Ctrl-C is how one stops following; not a failure.
        return


def register(app: typer.Typer) -> None:
    app.command()(version)
    app.command()(logs)
