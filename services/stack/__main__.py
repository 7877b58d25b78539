"""`make run`: start the whole stack serving the bundled model; Ctrl-C stops everything."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from services.common.logs import configure_logging
from services.stack.config import StackSettings
from services.stack.launcher import LocalStack, StackError

_log = logging.getLogger("services.stack")


async def _run(settings: StackSettings, gguf: Path | None) -> int:
    stack = LocalStack(settings, os.environ)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stack.start()
    except StackError as exc:
        _log.error("%s", exc)
        return 1
    try:
        if gguf is not None and await stack.ensure_model(gguf, settings.bundled_model):
            _log.info("packaged %s into %s", settings.bundled_model, settings.models_path)
        _log.info(
            "Model Runner is up: %s  (logs in %s; Ctrl-C stops)",
            stack.gateway_url,
            settings.log_dir,
        )
        _log.info(
            "try: curl %s/engines/llama.cpp/v1/chat/completions -d "
            '\'{"model":"%s","messages":[{"role":"user","content":"Hello"}]}\'',
            stack.gateway_url,
            settings.bundled_model,
        )
        exited = asyncio.ensure_future(stack.wait_any_exit())
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for future in (exited, stopping):
            future.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await future
        if exited in done:
            service = exited.result()
            _log.error("%s", service.exit_reason())
            return 1
        return 0
    except StackError as exc:
        _log.error("%s", exc)
        return 1
    finally:
        _log.info("stopping")
        await stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="model-runner-stack", description=__doc__)
    parser.add_argument("--gguf", type=Path, help="GGUF file to package as the bundled model")
    args = parser.parse_args()
    settings = StackSettings.from_env(os.environ)
    configure_logging("stack", settings.log_level)
    gguf = args.gguf.resolve() if args.gguf else None
    sys.exit(asyncio.run(_run(settings, gguf)))


if __name__ == "__main__":
    main()
