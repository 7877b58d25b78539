"""`verify`: have the registry re-hash every blob (this project's extension to DMR's CLI).

Exit 0 when every blob is intact, 1 when any is corrupt or missing (after printing which, and the
models they break), so scripts and health checks can act on it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from model_cli.commands.common import print_line
from model_cli.errors import CliError
from model_cli.render import human_size, print_json, verify_table
from model_cli.state import state_of

__all__ = ["register"]

Json = Any


class StoreDamaged(CliError):
    """The check ran and found corrupt or missing blobs."""


def _summary(report: Json) -> str:
    return (
        f"Verified {report.get('ok', 0) + report.get('corrupt', 0) + report.get('missing', 0)} "
        f"blob(s) of {report.get('models', 0)} model(s), "
        f"{human_size(float(report.get('bytes_checked') or 0))} read"
    )


def verify(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's JSON")] = False,
) -> None:
    """Re-hash every blob in the model store; list corrupt or missing ones."""
    state = state_of(ctx)
    with state.client() as client:
        report = client.verify()
    if as_json:
        print_json(report, state.stdout)
    else:
        bad = [blob for blob in report.get("blobs") or [] if blob.get("status") != "ok"]
        if bad:
            state.out.print(verify_table(bad))
        print_line(state.out, _summary(report) + (": all ok" if not bad else ""))
    corrupt, missing = report.get("corrupt", 0), report.get("missing", 0)
    if corrupt or missing:
        raise StoreDamaged(f"the store has {corrupt} corrupt and {missing} missing blob(s)")


def register(app: typer.Typer) -> None:
    app.command()(verify)
