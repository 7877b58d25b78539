"""Errors in Ollama's shape: `{"error": "<message>"}` with the HTTP status.

Ollama's clients read the status and the `error` string (the Python client raises
`ResponseError(error, status_code)`). Every GatewayError raised under /api, by these routes or by
the shared code they call (bodies.py, upstream.py, errors.from_rpc_error), is rendered here by
OllamaRoute, so none leaves in the OpenAI shape the rest of the gateway answers with; the statuses
are the gateway's own (404 unknown model, 400 bad request, 503 busy with Retry-After, ...). After
a streamed 200 head a failure is one `{"error": ...}` line, which the client raises as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import errors
from services.gateway.inference import REQUEST_ID_HEADER

__all__ = ["OllamaRoute", "error_line", "error_payload", "error_response"]

_log = logging.getLogger(__name__)

_JSON = "application/json"


def error_payload(err: errors.GatewayError) -> dict[str, Any]:
    return {"error": err.message}


def error_line(err: errors.GatewayError) -> bytes:
    """The last line of an NDJSON stream that failed after its head."""
    return orjson.dumps(error_payload(err)) + b"\n"


def error_response(err: errors.GatewayError, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return Response(
        orjson.dumps(error_payload(err)),
        status_code=err.status_code,
        media_type=_JSON,
        headers=headers,
    )


class OllamaRoute(APIRoute):
    """An APIRoute whose GatewayErrors are answered in Ollama's shape, not the app's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except errors.GatewayError as err:
                if err.status_code >= 500:
                    _log.warning(
                        "%s %s: %d %s",
                        request.method,
                        request.url.path,
                        err.status_code,
                        err.message,
                    )
                return error_response(err, request.headers.get(REQUEST_ID_HEADER))

        return handle
