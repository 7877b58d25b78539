"""Model management: list, inspect, pull, push, tag, rm, purge, package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from model_cli.client import PackageUpload
from model_cli.commands.common import (
    checked_reference,
    print_line,
    pull_with_progress,
    push_with_progress,
)
from model_cli.errors import ConflictError, InputError
from model_cli.progress import open_display
from model_cli.render import models_table, print_json, short_id
from model_cli.state import state_of

__all__ = ["register"]

Json = Any
_ModelArg = Annotated[str, typer.Argument(help="Model reference, e.g. ai/smollm2 or an ID")]
_JsonOpt = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON")]


def list_models(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Argument(help="Only models whose tag contains this text")
    ] = None,
    as_json: _JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only model IDs")] = False,
    openai: Annotated[bool, typer.Option("--openai", help="OpenAI's model list (JSON)")] = False,
) -> None:
    """List local models (alias: ls)."""
    if openai and quiet:
        raise typer.BadParameter("--openai and --quiet cannot be combined", param_hint="--openai")
    state = state_of(ctx)
    with state.client() as client:
        if openai:
            print_json(client.list_openai_models(), state.stdout)
            return
        models = client.list_models()
    if model:
        models = [m for m in models if any(model in str(tag) for tag in m.get("tags") or [])]
    if as_json:
        print_json(models, state.stdout)
    elif quiet:
        seen: list[str] = []
        for entry in models:
            ident = short_id(str(entry.get("id") or ""))
            if ident not in seen:
                seen.append(ident)
                state.stdout.write(ident + "\n")
    else:
        state.out.print(models_table(models, state.clock.wall()))


def inspect(
    ctx: typer.Context,
    model: _ModelArg,
    remote: Annotated[
        bool, typer.Option("--remote", "-r", help="Ask the registry the model lives in")
    ] = False,
    openai: Annotated[bool, typer.Option("--openai", help="OpenAI's model object")] = False,
) -> None:
    """Display detailed information on one model (JSON)."""
    if remote and openai:
        raise typer.BadParameter("--remote and --openai cannot be combined", param_hint="--openai")
    state = state_of(ctx)
    with state.client() as client:
        answer = client.inspect_openai(model) if openai else client.inspect(model, remote=remote)
    print_json(answer, state.stdout)


def pull(ctx: typer.Context, model: _ModelArg) -> None:
    """Pull a model from a registry, with live progress."""
    checked_reference(model, "MODEL")
    state = state_of(ctx)
    with state.client() as client:
        print_line(state.out, pull_with_progress(state, client, model, state.out))


def push(ctx: typer.Context, model: _ModelArg) -> None:
    """Push a local model to the registry its name points at, with live progress."""
    state = state_of(ctx)
    with state.client() as client:
        print_line(state.out, push_with_progress(state, client, model, state.out))


def tag(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Existing model")],
    target: Annotated[str, typer.Argument(help="New reference, e.g. localhost:5000/me/model:v1")],
) -> None:
    """Give a model another reference."""
    reference = checked_reference(target, "TARGET")
    if reference.digest:
        raise typer.BadParameter("a tag cannot be a digest", param_hint="TARGET")
    repository = (
        reference.repository
        if reference.is_default_registry
        else f"{reference.registry}/{reference.repository}"
    )
    state = state_of(ctx)
    with state.client() as client:
        answer = client.tag(source, repository, reference.tag)
    message = answer.get("message") if isinstance(answer, dict) else None
    print_line(state.out, str(message or f"Model tagged successfully with {target}"))


def remove(
    ctx: typer.Context,
    models: Annotated[list[str], typer.Argument(help="Models to remove")],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Remove a model ID with several tags")
    ] = False,
) -> None:
    """Remove local models."""
    state = state_of(ctx)
    with state.client() as client:
        for model in models:
            try:
                actions = client.remove(model, force=force)
            except ConflictError as exc:
                raise ConflictError(exc.status, f"{exc.message} (use --force)") from None
            for action in actions:
                for verb, what in dict(action).items():
                    print_line(state.out, f"{verb}: {what}")


def purge(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", "-f", help="Do not ask")] = False,
) -> None:
    """Remove every model and blob from the store."""
    state = state_of(ctx)
    if not force:
        if not state.stdin_is_terminal():
            raise InputError("purge removes every model: confirm with --force")
        if not typer.confirm("Remove every model from the store?", default=False):
            return
    with state.client() as client:
        answer = client.purge()
    print_line(
        state.out,
        f"Removed {answer.get('deleted_models', 0)} model(s), {answer.get('deleted_blobs', 0)} blob(s)",
    )


def _read_small_file(path: Path | None) -> bytes:
    if path is None:
        return b""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def package(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="Reference to package as, e.g. me/model:v1")],
    gguf: Annotated[
        Path,
        typer.Option(
            "--gguf",
            help="GGUF file to package",
            exists=True,
            dir_okay=False,
            readable=True,
            resolve_path=True,
        ),
    ],
    license_file: Annotated[
        Path | None,
        typer.Option(
            "--license", "-l", help="License file", exists=True, dir_okay=False, readable=True
        ),
    ] = None,
    chat_template: Annotated[
        Path | None,
        typer.Option(
            "--chat-template",
            help="Jinja chat template",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    context_size: Annotated[
        int | None, typer.Option("--context-size", min=1, help="Context size the model declares")
    ] = None,
    push_after: Annotated[
        bool, typer.Option("--push", help="Push to the registry TARGET names afterwards")
    ] = False,
) -> None:
    """Package a GGUF file as a model (an OCI artifact) in the store, optionally pushing it."""
    checked_reference(target, "TARGET")
    state = state_of(ctx)
    upload = PackageUpload(
        gguf=gguf,
        tag=target,
        context_size=context_size or 0,
        license=_read_small_file(license_file),
        chat_template=_read_small_file(chat_template),
    )
    try:
        size = gguf.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {gguf}: {exc.strerror or exc}") from None
    display = open_display(
        state.out, "upload", clock=state.clock, interval=state.settings.progress_interval
    )
    sent = 0

    def on_bytes(count: int) -> None:
        nonlocal sent
        sent += count
        display.update(gguf.name, gguf.name, sent, size)

    with state.client() as client:
        try:
            model = client.package(upload, on_bytes)
        finally:
            display.close()
        ident = short_id(str(model.get("id") or "")) if isinstance(model, dict) else ""
        print_line(state.out, f"Model packaged as {target} ({ident})")
        if push_after:
            print_line(state.out, push_with_progress(state, client, target, state.out))


def register(app: typer.Typer) -> None:
    app.command("list")(list_models)
    app.command("ls", hidden=True)(list_models)
    app.command()(inspect)
    app.command()(pull)
    app.command()(push)
    app.command()(tag)
    app.command("rm")(remove)
    app.command()(purge)
    app.command()(package)
