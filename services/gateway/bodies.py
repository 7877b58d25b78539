"""Reading request bodies with a size limit, for every route that takes one."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from services.gateway import errors

__all__ = ["read_body"]


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
