"""`/api/pull` and `/api/push`: the registry's transfer progress in Ollama's shape.

Streamed (the default), one object per line, as Ollama writes them:

    {"status": "pulling manifest"}                         (push: "retrieving manifest")
    {"status": "pulling 5e8a...", "digest": "sha256:5e8a...", "total": N, "completed": M}
    {"status": "success"}
    {"error": "..."}                                       a failure after the head

`stream: false` answers one object once the transfer is over: `{"status": "success"}`, or the
error with its HTTP status. As for DMR's routes (dmr/transfers.py), the registry's first message
is awaited before the response starts, so a bad reference (400), an unknown model (404), bad
credentials (401) or an unreachable registry (503) get their status even when streaming. The
pull always asks the registry, as `ollama pull` does, so a tag already in the store is updated
when the registry has a newer manifest (the registry skips the blobs it has).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response

from modelrunner.v1 import registry_pb2
from services.gateway import errors
from services.gateway.bodies import read_body_model
from services.gateway.context import GatewayContext
from services.gateway.inference import request_id_from
from services.gateway.ollama.errors import error_line
from services.gateway.ollama.models import TransferRequest
from services.gateway.ollama.response import Lines, OllamaResponse, Whole, json_line

__all__ = ["progress_object", "transfer"]

_TransferCall = grpc.aio.UnaryStreamCall[Any, registry_pb2.TransferProgress]
_SHORT_DIGEST = 12
_OPENING = {"pull": "pulling manifest", "push": "retrieving manifest"}
_VERB = {"pull": "pulling", "push": "pushing"}


def _bearer_token(request: Request) -> str:
    """`Authorization: Bearer <token>` for the upstream registry, as DMR's routes take it."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def progress_object(event: registry_pb2.TransferProgress, mode: str) -> dict[str, Any] | None:
    """One progress message as Ollama's object; None for the terminal ones (success, error)."""
    if event.type == registry_pb2.TRANSFER_EVENT_TYPE_PROGRESS and event.HasField("layer"):
        digest = event.layer.id
        short = digest.removeprefix("sha256:")[:_SHORT_DIGEST]
        return {
            "status": f"{_VERB[mode]} {short}",
            "digest": digest,
            "total": event.layer.size,
            "completed": event.layer.current,
        }
    if event.type == registry_pb2.TRANSFER_EVENT_TYPE_WARNING and event.message:
        return {"status": event.message}
    return None


def _event_error(event: registry_pb2.TransferProgress) -> errors.GatewayError:
    """An ERROR message's failure with the status the registry says it would have aborted with."""
    message = event.message or "transfer failed"
    code = getattr(grpc.StatusCode, event.error_code, grpc.StatusCode.UNKNOWN)
    failure = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), message)
    return errors.from_rpc_error(
        failure, errors.RpcStep.MANAGEMENT, precondition=errors.Unprocessable, what="registry"
    )


def _failure(exc: grpc.aio.AioRpcError) -> errors.GatewayError:
    return errors.from_rpc_error(
        exc, errors.RpcStep.MANAGEMENT, precondition=errors.Unprocessable, what="registry"
    )


async def transfer(request: Request, context: GatewayContext, mode: str) -> Response:
    """A pull or push (`mode`) of the request's model, answered as Ollama does."""
    body = await read_body_model(request, TransferRequest, context.settings.max_body_bytes)
    if not body.model_name:
        raise errors.InvalidRequest("model is required", param="model")
    credentials = registry_pb2.RegistryCredentials(bearer_token=_bearer_token(request))
    timeout = context.settings.transfer_timeout

    async def produce() -> Whole | Lines:
        call: _TransferCall
        if mode == "pull":
            call = context.registry.pull(body.model_name, credentials, timeout=timeout)
        else:
            call = context.registry.push(body.model_name, credentials, timeout=timeout)
        handed_over = False
        try:
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as exc:
                raise _failure(exc) from None
            if not body.streaming:
                return Whole(await _outcome(call, first))
            cleanup = contextlib.AsyncExitStack()
            cleanup.callback(call.cancel)
            handed_over = True
            return Lines(_lines(call, first, mode), cleanup)
        finally:
            if not handed_over:
                call.cancel()

    return OllamaResponse(produce, request_id_from(request.headers))


async def _outcome(call: _TransferCall, first: object) -> dict[str, Any]:
    """Read the transfer to its end; `{"status": "success"}` or the failure raised."""
    message = first
    try:
        while isinstance(message, registry_pb2.TransferProgress):
            if message.type == registry_pb2.TRANSFER_EVENT_TYPE_ERROR:
                raise _event_error(message)
            if message.type == registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS:
                return {"status": "success"}
            message = await call.read()
    except grpc.aio.AioRpcError as exc:
        raise _failure(exc) from None
    raise errors.UpstreamError("the registry ended the transfer without a result")


async def _lines(call: _TransferCall, first: object, mode: str) -> AsyncGenerator[bytes, None]:
    yield json_line({"status": _OPENING[mode]})
    message = first
    try:
        while isinstance(message, registry_pb2.TransferProgress):
            if message.type == registry_pb2.TRANSFER_EVENT_TYPE_ERROR:
                yield error_line(_event_error(message))
                return
            if message.type == registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS:
                yield json_line({"status": "success"})
                return
            progress = progress_object(message, mode)
            if progress is not None:
                yield json_line(progress)
            message = await call.read()
    except grpc.aio.AioRpcError as exc:
        yield error_line(_failure(exc))
        return
    yield error_line(errors.UpstreamError("the registry ended the transfer without a result"))
