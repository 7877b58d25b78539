"""The ASGI response of the Ollama routes that reach a worker or the registry.

It runs the whole exchange, getting the upstream (Assign and a cold load, the Generate head, a
registry's first progress message) as well as relaying it, under one disconnect watcher, as
relay.py does for the OpenAI routes: a client that goes away at any point cancels the work, so
the worker stops generating and the lease goes back at once, not at the next write. Failures
before the first byte are answered with their real HTTP status in Ollama's shape; the answer is
then either one JSON object (`Whole`) or JSON lines (`Lines`, application/x-ndjson) whose
upstream (`cleanup`) is closed on every exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.gateway import errors
from services.gateway.ollama.errors import error_payload

__all__ = ["NDJSON", "Lines", "OllamaResponse", "Whole", "json_line"]

_log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
_JSON = b"application/json"


def json_line(value: Any) -> bytes:
    return orjson.dumps(value) + b"\n"


@dataclass(frozen=True)
class Whole:
    """One JSON object, sent with a content-length."""

    payload: dict[str, Any]


@dataclass(frozen=True)
class Lines:
    """A stream of JSON lines; `cleanup` holds what they read from and is closed at the end."""

    lines: AsyncGenerator[bytes, None]
    cleanup: contextlib.AsyncExitStack
    headers: Mapping[str, str] = field(default_factory=dict)


Produce = Callable[[], Awaitable[Whole | Lines]]


def _encode(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1", "replace"))
        for name, value in headers.items()
    ]


class OllamaResponse(Response):
    def __init__(self, produce: Produce, request_id: str) -> None:
        # Response.__init__ would render a body now; it comes from `produce` instead.
        self.status_code = 200
        self.background = None
        self._produce = produce
        self._request_id = request_id
        # Set before the last message is sent: from then on a disconnect is the normal end of
        # the exchange, and cleanup must not be interrupted.
        self._finishing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with asyncio.TaskGroup() as group:
            work = group.create_task(self._respond(send))
            watcher = group.create_task(self._cancel_on_disconnect(receive, work))
            work.add_done_callback(lambda _: watcher.cancel())

    async def _cancel_on_disconnect(self, receive: Receive, work: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._finishing:
                    _log.info("request %s: client disconnected; cancelling", self._request_id)
                    work.cancel()
                return

    async def _respond(self, send: Send) -> None:
        try:
            outcome = await self._produce()
        except errors.GatewayError as err:
            if err.status_code >= 500:
                _log.warning("request %s: %d %s", self._request_id, err.status_code, err.message)
            await self._send_whole(send, err.status_code, error_payload(err), err.headers)
            return
        if isinstance(outcome, Whole):
            await self._send_whole(send, 200, outcome.payload, {})
            return
        async with outcome.cleanup:
            try:
                await self._send_lines(send, outcome)
            finally:
                await outcome.lines.aclose()

    async def _send_lines(self, send: Send, outcome: Lines) -> None:
        headers = [(b"content-type", NDJSON.encode()), (b"cache-control", b"no-cache")]
        headers += _encode({"X-Request-ID": self._request_id, **outcome.headers})
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for line in outcome.lines:
                await send({"type": "http.response.body", "body": line, "more_body": True})
            self._finishing = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            # The client went away mid-write; nobody is left to tell.
            return

    async def _send_whole(
        self, send: Send, status: int, payload: dict[str, Any], extra: Mapping[str, str]
    ) -> None:
        body = orjson.dumps(payload)
        headers = [
            (b"content-type", _JSON),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        headers += _encode({"X-Request-ID": self._request_id, **extra})
        self._finishing = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
