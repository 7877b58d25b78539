#!/usr/bin/env python3
"""Make sure one model is in the store: the one-shot `model-init` job of compose and Kubernetes.

    model-runner-seed REFERENCE [--gguf FILE] [--wait SECONDS]

Nothing happens when the store already holds REFERENCE as an exact tag (the check `make run`
makes before packaging the bundled model). Otherwise FILE is packaged as REFERENCE, streamed
through the gateway (what `model-cli package` does), or, without --gguf, REFERENCE is pulled
from its registry (`model-cli pull`). The gateway is MODEL_RUNNER_HOST, with the CLI's timeouts
(model-cli settings); the job waits up to --wait seconds for it to answer, so it may start
together with the rest of the stack.

Installed in every image as /usr/local/bin/model-runner-seed (Dockerfile). Exits 0 when the
model is there, 1 (one `Error: ...` line) otherwise, so the orchestrator retries.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from model_cli.client import GatewayClient, PackageUpload
from model_cli.config import CliSettings
from model_cli.errors import CliError, GatewayUnreachable, NotFoundError
from services.common.env import SettingError
from services.common.reference import InvalidReference, parse_reference

__all__ = ["SeedError", "has_exact_tag", "main", "seed", "wait_for_gateway"]

_DEFAULT_WAIT = 300.0
_POLL_INTERVAL = 1.0


class SeedError(RuntimeError):
    """The model could not be put into the store."""


def wait_for_gateway(
    client: GatewayClient,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll the gateway until it answers, under an overall deadline."""
    deadline = clock() + timeout
    while True:
        try:
            client.version()
            return
        except GatewayUnreachable as exc:
            if clock() >= deadline:
                raise SeedError(f"{exc.one_line()} (waited {timeout:.0f}s)") from exc
        sleep(_POLL_INTERVAL)


def has_exact_tag(client: GatewayClient, reference: str) -> bool:
    """Whether the store has `reference` itself; a partial-name match does not count."""
    wanted = parse_reference(reference).familiar
    try:
        model = client.inspect(reference)
    except NotFoundError:
        return False
    tags = model.get("tags") if isinstance(model, dict) else None
    return isinstance(tags, list) and wanted in tags


def seed(client: GatewayClient, reference: str, gguf: Path | None) -> str:
    """Put `reference` into the store unless it is there; says what was done."""
    if has_exact_tag(client, reference):
        return f"{reference} is already in the store"
    if gguf is not None:
        model = client.package(PackageUpload(gguf=gguf, tag=reference), lambda _count: None)
        ident = model.get("id", "") if isinstance(model, dict) else ""
        return f"packaged {gguf} as {reference} {ident}".rstrip()
    for event in client.pull(reference):
        if event.type == "error":
            raise SeedError(f"pulling {reference}: {event.message}")
    if not has_exact_tag(client, reference):
        raise SeedError(f"pulling {reference} ended without the model in the store")
    return f"pulled {reference}"


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model-runner-seed", description=__doc__)
    parser.add_argument("reference", help="model to ensure, e.g. ai/smollm2")
    parser.add_argument("--gguf", type=Path, help="GGUF file to package (default: pull)")
    parser.add_argument(
        "--wait", type=float, default=_DEFAULT_WAIT, help="seconds to wait for the gateway"
    )
    args = parser.parse_args(argv)
    try:
        parse_reference(args.reference)
        if args.gguf is not None and not args.gguf.is_file():
            raise SeedError(f"{args.gguf} is not a file")
        settings = CliSettings.from_env(os.environ if env is None else env)
        with GatewayClient(settings) as client:
            wait_for_gateway(client, args.wait)
            print(seed(client, args.reference, args.gguf), flush=True)
    except (SeedError, CliError, SettingError, InvalidReference) as exc:
        message = exc.one_line() if isinstance(exc, CliError) else str(exc)
        print(f"Error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
