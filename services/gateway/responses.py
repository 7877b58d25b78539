"""Small response builders shared by the routes: JSON via orjson, errors in OpenAI's shape."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from services.gateway.errors import GatewayError, error_body

__all__ = ["error_response", "json_response"]

_JSON = "application/json"


def json_response(data: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status_code, media_type=_JSON)


def error_response(err: GatewayError, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return Response(error_body(err), status_code=err.status_code, media_type=_JSON, headers=headers)
