"""Stand-in upstream registries for unit tests: real HTTP servers on loopback (aiohttp.web).

Pulls speak to them through the registry's real clients (httpx for manifests and tokens, aiohttp
for blob bodies), so what is tested is what runs. Each server is one handler listening on one or
more ports; a handler tells the "hosts" apart by the port a request came in on.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from aiohttp import web

__all__ = ["Handler", "port_of", "refused_port", "serve"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Handlers that are still running when a test ends (a stalled body, say) get this long.
_SHUTDOWN_TIMEOUT = 1.0


@contextlib.asynccontextmanager
async def serve(handler: Handler, *, ports: int = 1) -> AsyncIterator[list[int]]:
    """`handler` for every method and path on `ports` fresh loopback ports; yields the ports."""

    async def route(request: web.Request) -> web.StreamResponse:
        # A coroutine function of our own: aiohttp deprecates other callables as handlers.
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app, shutdown_timeout=_SHUTDOWN_TIMEOUT, access_log=None)
    await runner.setup()
    try:
        for _ in range(ports):
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield [int(address[1]) for address in runner.addresses]
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the context lasts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Bound but never listening: nothing else can take the port, and connects are refused.
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def port_of(request: web.Request) -> int:
    """The local port `request` arrived on."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    assert sockname is not None
    return int(sockname[1])
