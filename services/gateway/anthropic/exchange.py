"""One Anthropic exchange as an ASGI response: produce the answer, send it, clean up, and stop
everything if the client goes away first.

The producer runs inside the response, not in the route body, so that one watcher covers the
whole exchange (waiting for a worker, a cold load, the prompt, each token): a disconnect cancels
it, and with it the gRPC call, so the worker stops llama-server's generation. Whatever the
producer opens goes on an AsyncExitStack that closes on every exit path (done, failed, cancelled,
or a streamed body that was never iterated), which is what hands the lease back. Errors the
producer raises before anything was sent become a real HTTP status in Anthropic's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from services.gateway import errors
from services.gateway.anthropic.errors import error_response

__all__ = ["Exchange", "Producer"]

_log = logging.getLogger(__name__)

Producer = Callable[[contextlib.AsyncExitStack], Awaitable[Response]]


class Exchange(Response):
    def __init__(self, produce: Producer, request_id: str) -> None:
        # Response.__init__ would render a body; the producer's response is what is sent.
        self.status_code = 200
        self.background = None
        self._produce = produce
        self._request_id = request_id
        # Set when the last message is being sent: from then on a disconnect is the normal end
        # of the exchange, and cleanup must not be interrupted.
        self._finishing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._finishing = True
            await send(message)

        async with asyncio.TaskGroup() as group:
            work = group.create_task(self._run(scope, tracked))
            watcher = group.create_task(self._cancel_on_disconnect(receive, work))
            work.add_done_callback(lambda _: watcher.cancel())

    async def _run(self, scope: Scope, send: Send) -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await self._produce(stack)
            except errors.GatewayError as err:
                if err.status_code >= 500:
                    _log.warning(
                        "request %s: %d %s", self._request_id, err.status_code, err.message
                    )
                response = error_response(err, self._request_id)
            except Exception:
                # A bug, not a verdict; the client still gets an answer in its API's shape.
                _log.exception("request %s: failed before answering", self._request_id)
                response = error_response(
                    errors.GatewayError("internal error in the gateway"), self._request_id
                )
            # The watcher owns `receive`; the inner response must not read it too.
            await response(scope, _never_disconnects, send)

    async def _cancel_on_disconnect(self, receive: Receive, work: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._finishing:
                    _log.info("request %s: client disconnected; cancelling", self._request_id)
                    work.cancel()
                return


async def _never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")
