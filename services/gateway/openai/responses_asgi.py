"""Two ASGI responses for translating routes, so that a client that goes away stops the work and
the worker's lease goes back on every path.

- `DeferredResponse` runs the whole exchange (a non-streamed inference) when the server calls the
  response, with a watcher that cancels it if the client disconnects meanwhile; Starlette does not
  cancel a plain route for that, so a gone client would otherwise hold the lease until the model
  finished.
- `EventStreamResponse` is Starlette's StreamingResponse (which cancels the body iterator on a
  disconnect) plus a cleanup that always runs: a generator that was never started has no
  `finally` to run, so the upstream it was handed is closed here instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["DeferredResponse", "EventStreamResponse"]


async def _cancel_on_disconnect(receive: Receive, work: asyncio.Task[None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            work.cancel()
            return


class DeferredResponse(Response):
    """Awaits `compute` at send time, then sends the response it returns."""

    def __init__(self, compute: Callable[[], Awaitable[Response]]) -> None:
        # Response.__init__ would render a body; the real response comes from `compute`.
        self.status_code = 200
        self.background = None
        self._compute = compute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answers: list[Response] = []

        async def work() -> None:
            answers.append(await self._compute())

        async with asyncio.TaskGroup() as group:
            task = group.create_task(work())
            watcher = group.create_task(_cancel_on_disconnect(receive, task))
            task.add_done_callback(lambda _: watcher.cancel())
        # Nothing to send when the client left (the task was cancelled).
        for answer in answers:
            await answer(scope, receive, send)


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` from `events`; `cleanup` runs once the exchange ends, however."""

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        cleanup: Callable[[], Awaitable[None]],
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **headers},
        )
        self._events = events
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._events.aclose()
            finally:
                await self._cleanup()
