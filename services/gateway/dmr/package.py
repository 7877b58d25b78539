"""`POST /models/package`: DMR's `docker model package` through the API, the GGUF streamed.

    POST /models/package?tag=<ref>[&context_size=<n>][&filename=<name>]
    Content-Type: application/octet-stream          (or none)
    X-Model-License: <base64 of the license file>   (optional)
    X-Model-Chat-Template: <base64 of the template> (optional)
    <body: the GGUF file, e.g. `curl -T model.gguf` or `--data-binary @model.gguf`>

answers 201 with the packaged model in DMR's shape (as `GET /models/{name}`). The GGUF is the raw
body so it can be relayed chunk by chunk to the registry's PackageUpload call while it arrives:
never held whole here, with gRPC flow control slowing the client down to the registry's disk. The
license and chat template are small text files, so they ride in headers (base64, because a header
cannot carry arbitrary bytes) instead of needing a multipart parser that would have to buffer.
DMR's own route, `POST /models/load`, takes a tar instead; this one is ours.

Statuses: 400 for a missing tag, a bad parameter or header, a body that is not a GGUF or was cut
short; 413 beyond GATEWAY_MAX_BODY_BYTES for either header file or REGISTRY_MAX_UPLOAD_BYTES for the
GGUF; 415 for a multipart or JSON body (send the file itself).
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import grpc
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from modelrunner.v1 import registry_pb2
from services.gateway import errors
from services.gateway.context import GatewayContext
from services.gateway.models_view import dmr_model
from services.gateway.responses import json_response

__all__ = ["CHAT_TEMPLATE_HEADER", "LICENSE_HEADER", "package_upload"]

LICENSE_HEADER = "x-model-license"
CHAT_TEMPLATE_HEADER = "x-model-chat-template"
_REFUSED_TYPES = ("multipart/", "application/json")

_UploadCall = grpc.aio.StreamUnaryCall[
    registry_pb2.PackageUploadRequest, registry_pb2.PackageResponse
]


def _context_size(request: Request) -> int:
    raw = request.query_params.get("context_size", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > 2**31 - 1:
        raise errors.InvalidRequest(
            "context_size must be a whole number between 0 and 2147483647", param="context_size"
        )
    return int(raw)


def _header_file(request: Request, name: str, limit: int) -> bytes:
    raw = request.headers.get(name, "").strip()
    if not raw:
        return b""
    # base64 is 4/3 of the data; refuse before decoding anything that cannot fit.
    if len(raw) > (limit + 2) // 3 * 4:
        raise errors.PayloadTooLarge(f"{name} is larger than {limit} bytes")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise errors.InvalidRequest(f"{name} is not valid base64", param=name) from None


def _announced_size(request: Request) -> int:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else 0


def _upload_error(exc: grpc.aio.AioRpcError) -> errors.GatewayError:
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.PayloadTooLarge(exc.details() or "the GGUF is too large")
    return errors.from_rpc_error(
        exc, errors.RpcStep.MANAGEMENT, precondition=errors.Unprocessable, what="registry"
    )


async def _write(call: _UploadCall, message: registry_pb2.PackageUploadRequest) -> bool:
    """False when the registry already ended the call; awaiting the call then tells why."""
    # A write that fails after the registry's status arrived replaces that status with INTERNAL
    # "Internal error from Core" (grpc/grpc#36066): never write to a call that has ended.
    if call.done():
        return False
    try:
        await call.write(message)
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        return False
    return True


async def _send(
    call: _UploadCall, request: Request, header: registry_pb2.PackageUploadHeader, chunk_bytes: int
) -> None:
    if not await _write(call, registry_pb2.PackageUploadRequest(header=header)):
        return
    # HTTP delivers the body in pieces of a few KiB; regrouping them into chunk_bytes messages
    # keeps the per-message cost (here and the registry's write per message) small.
    pending = bytearray()
    async for part in request.stream():
        pending += part
        while len(pending) >= chunk_bytes:
            message = registry_pb2.PackageUploadRequest(gguf_chunk=bytes(pending[:chunk_bytes]))
            del pending[:chunk_bytes]
            if not await _write(call, message):
                return
    if pending and not await _write(
        call, registry_pb2.PackageUploadRequest(gguf_chunk=bytes(pending))
    ):
        return
    if await _write(call, registry_pb2.PackageUploadRequest(end=True)):
        await call.done_writing()


async def package_upload(request: Request, context: GatewayContext) -> Response:
    settings = context.settings
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(_REFUSED_TYPES):
        raise errors.UnsupportedMediaType(
            f"send the GGUF file itself as the body (application/octet-stream), not {content_type}"
        )
    tag = request.query_params.get("tag", "").strip()
    if not tag:
        raise errors.InvalidRequest("missing tag query parameter", param="tag")
    header = registry_pb2.PackageUploadHeader(
        tag=tag,
        context_size=_context_size(request),
        gguf_name=request.query_params.get("filename", "").strip(),
        gguf_size=_announced_size(request),
        license=_header_file(request, LICENSE_HEADER, settings.max_body_bytes),
        chat_template=_header_file(request, CHAT_TEMPLATE_HEADER, settings.max_body_bytes),
    )
    call = context.registry.package_upload(timeout=settings.transfer_timeout)
    try:
        await _send(call, request, header, settings.upload_chunk_bytes)
        reply = await call
    except grpc.aio.AioRpcError as exc:
        raise _upload_error(exc) from None
    except ClientDisconnect:
        # Cancelling the call (below) makes the registry drop the partial upload.
        raise errors.InvalidRequest("client disconnected while sending the GGUF") from None
    finally:
        call.cancel()
    return json_response(dmr_model(reply.model), status_code=201)
