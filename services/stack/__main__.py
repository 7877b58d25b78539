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
    stack = LocalStack(settings, os.environ, gguf)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(stack.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            # Ctrl-C while starting: stop() below also stops what has started so far.
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 130
        starting.result()
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
        done, _ = await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exited
        if exited in done:
            _log.error("%s", exited.result().exit_reason())
            return 1
        return 0
    except StackError as exc:
        _log.error("%s", exc)
        return 1
    finally:
        stopping.cancel()
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
