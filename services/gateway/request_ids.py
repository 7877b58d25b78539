"""The gateway's request id: taken from `X-Request-ID` (or made up), in force for the whole request,
and sent back on every response.

The outermost middleware, pure ASGI: it runs the request inside `request_id_scope`, so every log
line written while serving it carries the id (services/common/logs.py), and so does every gRPC
call made for it through channels opened with `request_id_client_interceptors()` (clients.py):
the scheduler, registry and worker log the same id. Tasks the request starts (the relay's
disconnect watcher, a streaming body) copy the context and keep it.

Setting the response header here, and nowhere else, covers every answer alike: routes, OpenAI
error bodies, CORS refusals and streams (the header goes out with the head, before the body).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.request_id import (
    REQUEST_ID_KEY,
    clean_request_id,
    new_request_id,
    request_id_scope,
)

__all__ = ["RequestIds", "incoming_request_id"]

_HEADER = REQUEST_ID_KEY.encode("ascii")


def incoming_request_id(scope: Scope) -> str:
    """The client's `X-Request-ID` when it is acceptable (1-128 visible ASCII characters), else a
    fresh one: the id must be safe to write into logs and headers."""
    for name, value in scope.get("headers", ()):
        if name == _HEADER:
            given = clean_request_id(value)
            if given is not None:
                return given
            break
    return new_request_id()


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        encoded = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Replaces any the route set, so the client never sees two.
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != _HEADER
                ]
                headers.append((_HEADER, encoded))
                message["headers"] = headers
            await send(message)

        with request_id_scope(request_id):
            await self._app(scope, receive, send_with_id)
