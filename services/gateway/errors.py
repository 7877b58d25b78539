"""Errors the gateway answers with, and the one mapping from gRPC status to HTTP.

Every error leaves the gateway in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, with `code` the HTTP status as an integer the
way llama-server writes its own errors, so a client sees one shape whether the gateway or
llama-server refused the request.

    GatewayError                 an HTTP error answer; carries status, OpenAI type, headers
    ├── InvalidRequest           400: malformed JSON, missing `model`, bad parameter
    ├── NotFound                 404: unknown model, backend or route
    ├── Conflict                 409: e.g. deleting a model that has several tags
    ├── Unauthorized             401: a registry refusing the credentials
    │   └── InvalidApiKey        401: API keys configured, none (or a wrong one) presented
    ├── Forbidden                403: a browser Origin that is not allowed (CORS)
    ├── PayloadTooLarge          413: body above GATEWAY_MAX_BODY_BYTES (or an upload above the
    │                            registry's REGISTRY_MAX_UPLOAD_BYTES)
    ├── UnsupportedMediaType     415: a body in a content type the route does not take
    ├── RateLimited              429: a key's requests or tokens per minute are used up
    │                            (Retry-After)
    ├── Unimplemented            501: a DMR route this gateway does not offer
    ├── UpstreamError            502: a worker or llama-server failed
    ├── ServiceUnavailable       503: no worker, scheduler/registry down, queue full
    ├── UpstreamTimeout          504: a deadline passed (load, generation, management call)
    └── InsufficientMemory       507: no worker can fit the model, even after evicting idle ones

`from_rpc_error` is where a gRPC status becomes one of these. The same status means different
things at different steps, so the caller says which step failed (`RpcStep`): UNAVAILABLE from
Assign means nobody can serve the model (503), from Generate that the worker or its llama-server
failed (502).

Some answers are the scheduler's verdict rather than a transport failure; it names them in the
trailing metadata key `x-modelrunner-reason` (scheduler.proto), and the reason decides the answer
whatever the status code: `insufficient-memory` is 507 with the scheduler's message (which gives
the sizes), `queue-full` is 503 with Retry-After.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import orjson

__all__ = [
    "INSUFFICIENT_MEMORY",
    "QUEUE_FULL",
    "REASON_KEY",
    "Conflict",
    "Forbidden",
    "GatewayError",
    "InsufficientMemory",
    "InvalidApiKey",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RpcStep",
    "ServiceUnavailable",
    "Unauthorized",
    "Unimplemented",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamTimeout",
    "error_body",
    "error_payload",
    "from_rpc_error",
    "rpc_reason",
    "sse_error_event",
    "translate_rpc_errors",
]

_INVALID = "invalid_request_error"
_NOT_FOUND = "not_found_error"
_SERVER = "server_error"

REASON_KEY = "x-modelrunner-reason"
INSUFFICIENT_MEMORY = "insufficient-memory"
QUEUE_FULL = "queue-full"


class GatewayError(Exception):
    """An error answer: HTTP status, OpenAI error type, message and extra headers."""

    status_code = 500
    error_type = _SERVER

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = _INVALID


class NotFound(GatewayError):
    status_code = 404
    error_type = _NOT_FOUND


class Forbidden(GatewayError):
    status_code = 403
    error_type = "permission_error"


class Conflict(GatewayError):
    status_code = 409
    error_type = _INVALID


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = _INVALID


class UnsupportedMediaType(GatewayError):
    status_code = 415
    error_type = _INVALID


class Unauthorized(GatewayError):
    status_code = 401
    error_type = "authentication_error"


class InvalidApiKey(Unauthorized):
    """A missing or wrong gateway API key: OpenAI types this one as an invalid request."""

    error_type = _INVALID


class RateLimited(GatewayError):
    """The client used its requests or tokens for this minute; Retry-After says when."""

    status_code = 429
    error_type = "rate_limit_error"


class Unprocessable(GatewayError):
    """The request is well-formed but names something this server cannot handle (DMR: an
    artifact with an unsupported media type)."""

    status_code = 422
    error_type = _INVALID


class UpstreamError(GatewayError):
    status_code = 502
    error_type = _SERVER


class ServiceUnavailable(GatewayError):
    status_code = 503
    error_type = _SERVER


class UpstreamTimeout(GatewayError):
    status_code = 504
    error_type = _SERVER


class Unimplemented(GatewayError):
    status_code = 501
    error_type = _SERVER


class InsufficientMemory(GatewayError):
    """No worker has the memory the model needs (HTTP 507, as DMR answered when it had a memory
    check); retrying will not help until models are unloaded or workers added."""

    status_code = 507
    error_type = "insufficient_storage"


class RpcStep(enum.Enum):
    """Which call failed; decides what UNAVAILABLE and FAILED_PRECONDITION mean."""

    ASSIGN = "assign"
    GENERATE = "generate"
    MANAGEMENT = "management"


def error_payload(err: GatewayError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": err.error_type,
            "param": err.param,
            "code": err.status_code,
        }
    }


def error_body(err: GatewayError) -> bytes:
    return orjson.dumps(error_payload(err))


def sse_error_event(err: GatewayError) -> bytes:
    """The one event sent when a stream fails after its 200 head was already sent."""
    return b"data: " + error_body(err) + b"\n\n"


def _retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def rpc_reason(exc: grpc.aio.AioRpcError) -> str:
    """The `x-modelrunner-reason` the peer attached to a failed call, or ""."""
    for key, value in exc.trailing_metadata() or ():
        if key == REASON_KEY and isinstance(value, str):
            return value
    return ""


def from_rpc_error(
    exc: grpc.aio.AioRpcError,
    step: RpcStep,
    *,
    precondition: type[GatewayError] | None = None,
    retry_after: float = 1.0,
    what: str = "",
) -> GatewayError:
    """The HTTP answer for a failed gRPC call.

    `precondition`: what FAILED_PRECONDITION becomes for this route, e.g. Conflict (409) for the
    delete of a multi-tag model or Unprocessable (422) for a pull of an unsupported artifact;
    400 otherwise. `what` names the peer in messages that would otherwise be vague ("registry").
    """
    code = exc.code()
    details = exc.details() or ""
    reason = rpc_reason(exc)
    if reason == INSUFFICIENT_MEMORY:
        return InsufficientMemory(details or "no worker has enough memory for this model")
    if reason == QUEUE_FULL:
        return ServiceUnavailable(
            details or "too many requests are waiting for this model, retry later",
            headers=_retry_after_header(retry_after),
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details or "model not found", param="model")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return InvalidRequest(details or "invalid request")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return (precondition or InvalidRequest)(
            details or "request cannot be served in the current state"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthorized(details or "unauthorized")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return Forbidden(details or "forbidden")
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return Conflict(details or "already exists")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ServiceUnavailable(
            details or "server is busy, retry later", headers=_retry_after_header(retry_after)
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeout(details or "request timed out")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Unimplemented(details or "not implemented")
    if code == grpc.StatusCode.UNAVAILABLE:
        if step is RpcStep.GENERATE:
            return UpstreamError(f"worker failed: {details}" if details else "worker failed")
        if step is RpcStep.ASSIGN:
            return ServiceUnavailable(details or "no worker can serve this model")
        peer = what or "backend service"
        return ServiceUnavailable(
            f"{peer} unavailable: {details}" if details else f"{peer} unavailable"
        )
    # CANCELLED, UNKNOWN, INTERNAL, DATA_LOSS, ...: the peer failed in a way the client cannot fix.
    return UpstreamError(details or f"upstream call failed ({code.name})")


@contextmanager
def translate_rpc_errors(
    what: str, *, precondition: type[GatewayError] | None = None, retry_after: float = 1.0
) -> Iterator[None]:
    """Turn a failed management call to `what` ("registry", "scheduler") into a GatewayError."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(
            exc,
            RpcStep.MANAGEMENT,
            precondition=precondition,
            retry_after=retry_after,
            what=what,
        ) from None
