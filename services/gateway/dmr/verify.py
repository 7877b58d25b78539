"""`POST /models/verify` (our extension; DMR has no such route): the registry re-hashes every blob.

200 with a report whenever the check ran, healthy or not, so a client tells "the store is damaged"
(`"healthy": false`, the bad blobs and the models they break) from "the check could not run" (an
OpenAI-shaped error). The whole store is read, so the call gets the transfer deadline
(GATEWAY_TRANSFER_TIMEOUT), not the short management one.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from modelrunner.v1 import registry_pb2
from services.gateway import errors
from services.gateway.context import GatewayContext
from services.gateway.responses import json_response

__all__ = ["verify_store", "verify_view"]

_STATUS_NAMES = {
    registry_pb2.BLOB_STATUS_OK: "ok",
    registry_pb2.BLOB_STATUS_CORRUPT: "corrupt",
    registry_pb2.BLOB_STATUS_MISSING: "missing",
}


def verify_view(reply: registry_pb2.VerifyResponse) -> dict[str, Any]:
    return {
        "healthy": reply.corrupt == 0 and reply.missing == 0,
        "models": reply.models,
        "ok": reply.ok,
        "corrupt": reply.corrupt,
        "missing": reply.missing,
        "bytes_checked": reply.bytes_checked,
        "blobs": [
            {
                "digest": blob.digest,
                "size": blob.size,
                "status": _STATUS_NAMES.get(blob.status, "unknown"),
                "models": list(blob.models),
                "detail": blob.detail,
            }
            for blob in reply.blobs
        ],
    }


async def verify_store(context: GatewayContext) -> Response:
    with errors.translate_rpc_errors("registry"):
        reply = await context.registry.verify(timeout=context.settings.transfer_timeout)
    return json_response(verify_view(reply))
