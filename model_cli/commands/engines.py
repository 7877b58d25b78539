"""The engines: status, ps, df, workers, unload, configure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from model_cli.client import GatewayClient
from model_cli.commands.common import checked_reference, print_line
from model_cli.render import (
    configurations_table,
    disk_usage_table,
    generic_table,
    print_json,
    running_table,
    workers_table,
)
from model_cli.state import state_of
from services.common.env import parse_duration

__all__ = ["configure_body", "register"]

Json = Any
_JsonOpt = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON")]
_SHOW = "show"


def status(ctx: typer.Context, as_json: _JsonOpt = False) -> None:
    """Check that Model Runner is running, and its backends' state."""
    state = state_of(ctx)
    with state.client() as client:
        backends = client.engines_status()
    if as_json:
        print_json(
            {"running": True, "endpoint": client.base_url, "backends": backends}, state.stdout
        )
        return
    print_line(state.out, f"Model Runner is running at {client.base_url}")
    if isinstance(backends, dict):
        for backend, text in backends.items():
            print_line(state.out, f"{backend}: {text}")


def _list(
    ctx: typer.Context,
    as_json: bool,
    fetch: Callable[[GatewayClient], list[Json]],
    table: Callable[[list[Json], float], Table],
) -> None:
    """Rows from the gateway, as its JSON or as a table."""
    state = state_of(ctx)
    with state.client() as client:
        rows = fetch(client)
    if as_json:
        print_json(rows, state.stdout)
    else:
        state.out.print(table(rows, state.clock.wall()))


def ps(ctx: typer.Context, as_json: _JsonOpt = False) -> None:
    """List loaded models: where they run, how busy, and until when."""
    _list(ctx, as_json, GatewayClient.running, running_table)


def df(ctx: typer.Context, as_json: _JsonOpt = False) -> None:
    """Show disk usage of the model store and the inference engines."""
    state = state_of(ctx)
    with state.client() as client:
        usage = client.disk_usage()
    if as_json:
        print_json(usage, state.stdout)
        return
    usage = usage if isinstance(usage, dict) else {}
    state.out.print(disk_usage_table(usage))
    workers = [w for w in usage.get("workers") or [] if isinstance(w, dict)]
    if workers:
        state.out.print()
        state.out.print(generic_table(workers))


def workers(ctx: typer.Context, as_json: _JsonOpt = False) -> None:
    """List the workers: alive, draining or dead, their tags, memory and runners."""
    _list(ctx, as_json, GatewayClient.workers, workers_table)


def unload(
    ctx: typer.Context,
    models: Annotated[list[str] | None, typer.Argument(help="Models to unload")] = None,
    unload_all: Annotated[bool, typer.Option("--all", help="Unload every model")] = False,
) -> None:
    """Unload models from memory (alias: stop)."""
    if unload_all and models:
        raise typer.BadParameter("give models or --all, not both", param_hint="--all")
    if not unload_all and not models:
        raise typer.BadParameter("give the models to unload, or --all", param_hint="MODELS")
    state = state_of(ctx)
    with state.client() as client:
        answer = client.unload(models or [], unload_all=unload_all)
    count = answer.get("unloaded_runners", 0) if isinstance(answer, dict) else 0
    print_line(state.out, f"Unloaded {count} model(s).")


def _required_tags(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key.strip():
            raise typer.BadParameter(
                f"expected KEY=VALUE, got {pair!r}", param_hint="--require-tag"
            )
        tags[key.strip()] = value.strip() if sep else "true"
    return tags


def configure_body(
    model: str,
    *,
    context_size: int | None = None,
    keep_alive: str | None = None,
    runtime_flags: list[str] | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    parallel: int | None = None,
    required_tags: dict[str, str] | None = None,
) -> dict[str, Json]:
    """The `POST /engines/_configure` body: only what was given, so the rest stays as it was."""
    body: dict[str, Json] = {"model": model}
    optional: dict[str, Json] = {
        "context-size": context_size,
        "keep_alive": keep_alive,
        "runtime-flags": runtime_flags or None,
        "min-replicas": min_replicas,
        "max-replicas": max_replicas,
        "parallel": parallel,
        "required-tags": required_tags or None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def configure(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model to configure, or `show` to list settings")],
    runtime_flags: Annotated[
        list[str] | None,
        typer.Argument(help="After `--`: llama-server arguments, e.g. -- --temp 0.2 --top-k 20"),
    ] = None,
    context_size: Annotated[
        int | None, typer.Option("--context-size", min=-1, help="Context size; -1 = model's")
    ] = None,
    keep_alive: Annotated[
        str | None,
        typer.Option("--keep-alive", help="Idle time before unload: 5m, 1h, 0 (now), -1 (never)"),
    ] = None,
    min_replicas: Annotated[int | None, typer.Option("--min-replicas", min=0)] = None,
    max_replicas: Annotated[int | None, typer.Option("--max-replicas", min=1)] = None,
    parallel: Annotated[
        int | None, typer.Option("--parallel", min=1, help="Requests one runner serves at once")
    ] = None,
    require_tag: Annotated[
        list[str] | None,
        typer.Option("--require-tag", help="Only workers with this KEY=VALUE tag (repeatable)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="`configure show`: print JSON")] = False,
) -> None:
    """Set how a model runs (context size, keep-alive, llama-server flags); `configure show` lists."""
    state = state_of(ctx)
    if model == _SHOW:
        wanted = runtime_flags[0] if runtime_flags else None
        with state.client() as client:
            entries = client.configurations()
        if wanted:
            entries = [e for e in entries if wanted in str(e.get("Model", ""))]
        if as_json:
            print_json(entries, state.stdout)
        else:
            state.out.print(configurations_table(entries))
        return
    checked_reference(model, "MODEL")
    if keep_alive is not None:
        try:
            parse_duration(keep_alive)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--keep-alive") from None
    if min_replicas is not None and max_replicas is not None and min_replicas > max_replicas:
        raise typer.BadParameter(
            "--min-replicas is above --max-replicas", param_hint="--min-replicas"
        )
    body = configure_body(
        model,
        context_size=context_size,
        keep_alive=keep_alive,
        runtime_flags=runtime_flags,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        parallel=parallel,
        required_tags=_required_tags(require_tag or []),
    )
    if len(body) == 1:
        raise typer.BadParameter(
            "nothing to configure: give --context-size, --keep-alive, ... or -- FLAGS",
            param_hint="MODEL",
        )
    with state.client() as client:
        client.configure(body)
    print_line(state.out, f"Configured {model}")


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(ps)
    app.command()(df)
    app.command()(workers)
    app.command()(unload)
    app.command("stop", hidden=True)(unload)
    app.command()(configure)
