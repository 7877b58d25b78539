"""DMR's pull and push over HTTP: the registry's progress stream as one JSON object per line.

The first progress message is awaited before the response starts, so a bad reference, an unknown
model, bad credentials or an unreachable registry get their own HTTP status. After that the
status is 200 and a failure arrives as DMR's `{"type": "error", ...}` line; the stream always ends
cleanly. A client that goes away cancels the call (starlette cancels the body iterator), and the
registry keeps the partial download for the next pull to resume.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse

from modelrunner.v1 import registry_pb2
from services.gateway import errors

__all__ = ["progress_line", "stream_transfer"]

_TYPE_NAMES = {
    registry_pb2.TRANSFER_EVENT_TYPE_PROGRESS: "progress",
    registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS: "success",
    registry_pb2.TRANSFER_EVENT_TYPE_WARNING: "warning",
    registry_pb2.TRANSFER_EVENT_TYPE_ERROR: "error",
}

TransferCall = grpc.aio.UnaryStreamCall[Any, registry_pb2.TransferProgress]


def progress_line(event: registry_pb2.TransferProgress) -> bytes:
    line: dict[str, Any] = {
        "type": _TYPE_NAMES.get(event.type, "progress"),
        "message": event.message,
        "total": event.total,
        "mode": event.mode,
    }
    if event.HasField("layer"):
        line["layer"] = {
            "id": event.layer.id,
            "size": event.layer.size,
            "current": event.layer.current,
        }
    return orjson.dumps(line) + b"\n"


def _error_line(err: errors.GatewayError, mode: str) -> bytes:
    line = {"type": "error", "message": f"Error: {err.message}", "mode": mode}
    return orjson.dumps(line) + b"\n"


async def stream_transfer(request: Request, call: TransferCall, mode: str) -> StreamingResponse:
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        call.cancel()
        raise errors.from_rpc_error(
            exc, errors.RpcStep.MANAGEMENT, precondition=errors.Unprocessable, what="registry"
        ) from None
    except BaseException:
        call.cancel()
        raise

    async def lines() -> AsyncIterator[bytes]:
        try:
            message: object = first
            while isinstance(message, registry_pb2.TransferProgress):
                yield progress_line(message)
                message = await call.read()
        except grpc.aio.AioRpcError as exc:
            yield _error_line(
                errors.from_rpc_error(exc, errors.RpcStep.MANAGEMENT, what="registry"), mode
            )
        finally:
            call.cancel()

    # DMR answers JSON lines as application/json when asked for JSON and as text otherwise.
    accept = request.headers.get("accept", "")
    media_type = "application/json" if "application/json" in accept else "text/plain"
    return StreamingResponse(lines(), media_type=media_type)
