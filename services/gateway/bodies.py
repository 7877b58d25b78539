"""Reading request bodies with a size limit, for every route that takes one."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
import pydantic
from starlette.requests import ClientDisconnect, Request

from services.gateway import errors

__all__ = ["read_body", "read_body_model", "read_json"]

_Body = TypeVar("_Body", bound=pydantic.BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
            parts.append(part)
    except ClientDisconnect:
        # Nobody will read the answer; this only ends the request quietly.
        raise errors.InvalidRequest("client disconnected while sending the body") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def read_json(request: Request, limit: int) -> Any:
    """The body parsed as JSON; an empty body counts as `{}`. 400 when it is not JSON."""
    body = await read_body(request, limit)
    try:
        return orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidRequest(f"request body is not valid JSON: {exc}") from None


async def read_body_model(request: Request, model: type[_Body], limit: int) -> _Body:
    """A JSON body parsed into `model`; an empty body counts as `{}`. 400 when it does not fit."""
    payload = await read_json(request, limit)
    try:
        return model.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise errors.InvalidRequest(f"invalid request body: {_first_error(exc)}") from None


def _first_error(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"
