"""The typer application and `run_cli`, the one place where failures become exit codes.

Exit codes: 0 success; 1 a failure (one `Error: ...` line on stderr, no traceback); 2 a usage
error (bad arguments, unknown command); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import httpx
import typer
from rich.console import Console

from model_cli.commands import bench, engines, models, run, system, verify
from model_cli.config import CliSettings
from model_cli.errors import CliError
from model_cli.state import CliState
from services.common.clock import Clock, SystemClock
from services.common.env import SettingError

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "build_app", "run_cli"]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_PIPE_WIDTH = 1000

_HELP = (
    "Docker Model Runner's command line for Model Runner: pull, package, push and run models "
    "through the gateway at MODEL_RUNNER_HOST (default http://localhost:12434)."
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        help=_HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    models.register(app)
    run.register(app)
    bench.register(app)
    engines.register(app)
    system.register(app)
    verify.register(app)
    return app


def _console(stream: TextIO) -> Console:
    # Off a terminal nothing wraps: a table piped to grep or a file keeps one line per row.
    terminal = _isatty(stream)
    return Console(file=stream, highlight=False, width=None if terminal else _PIPE_WIDTH)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:
        return False


def _error(stderr: TextIO, message: str) -> None:
    stderr.write(f"Error: {' '.join(message.split())}\n")
    stderr.flush()


def _usage_hint(exc: typer.TyperException, prog_name: str) -> str:
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or prog_name
    return f" (see '{command} --help')"


def run_cli(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    prog_name: str = "model-cli",
    transport: httpx.BaseTransport | None = None,
    clock: Clock | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command line; returns the exit code instead of exiting."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        settings = CliSettings.from_env(env)
    except SettingError as exc:
        _error(stderr, str(exc))
        return EXIT_FAILURE
    state = CliState(
        settings=settings,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        out=_console(stdout),
        err=_console(stderr),
        clock=clock or SystemClock(),
        prog_name=prog_name,
        transport=transport,
    )
    command = typer.main.get_command(build_app())
    try:
        result = command.main(
            args=list(argv), prog_name=prog_name, standalone_mode=False, obj=state
        )
    except CliError as exc:
        _error(stderr, exc.one_line())
        return exc.exit_code
    except typer.Abort:
        stderr.write("Aborted.\n")
        return EXIT_FAILURE
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            # A bare `model-cli` asks for help; it is not a mistake.
            help_text = exc.format_message().strip()
            if help_text:
                stdout.write(help_text + "\n")
            return 0
        _error(stderr, exc.format_message() + _usage_hint(exc, prog_name))
        return getattr(exc, "exit_code", EXIT_USAGE)
    except KeyboardInterrupt:
        stderr.write("\n")
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0
