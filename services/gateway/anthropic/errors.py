"""Gateway errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"},
"request_id"}` with the HTTP status, and as the `error` event that ends a stream.

The gateway's own exception tree (services/gateway/errors.py) is reused; only the rendering
differs. Anthropic's error types by status:

    400 invalid_request_error   (also 409, 415, 422 and other 4xx: the request cannot be served)
    401 authentication_error
    403 permission_error
    404 not_found_error
    413 request_too_large
    429 rate_limit_error
    503 overloaded_error        (queue full, no worker: retry later; Retry-After is kept)
    529 overloaded_error
    504 timeout_error
    500 api_error               (and every other 5xx: 502 worker failed, 507 no memory, ...)

The status itself is kept, so the `anthropic` client raises its own class for it
(BadRequestError, NotFoundError, ServiceUnavailableError, ...).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from services.gateway.errors import GatewayError

__all__ = ["REQUEST_ID_HEADERS", "error_event", "error_payload", "error_response", "error_type"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# Anthropic names its request id `request-id`; the gateway's own header is X-Request-ID.
REQUEST_ID_HEADERS = ("X-Request-ID", "request-id")


def error_type(status: int) -> str:
    known = _TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_payload(err: GatewayError, request_id: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "error",
        "error": {"type": error_type(err.status_code), "message": err.message},
    }
    if request_id is not None:
        payload["request_id"] = request_id
    return payload


def error_response(err: GatewayError, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
    if request_id is not None:
        headers.update(dict.fromkeys(REQUEST_ID_HEADERS, request_id))
    return Response(
        orjson.dumps(error_payload(err, request_id)),
        status_code=err.status_code,
        media_type="application/json",
        headers=headers,
    )


def error_event(err: GatewayError) -> bytes:
    """The `error` event that ends a stream whose 200 head was already sent."""
    return b"event: error\ndata: " + orjson.dumps(error_payload(err)) + b"\n\n"
