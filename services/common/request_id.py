"""Request ids: one id per client request, followed across services.

The gateway accepts a client's `X-Request-ID` (or makes one) and sends it as the gRPC metadata key
`x-request-id`. Every server reads it into a context variable (`RequestIdServerInterceptor`, which
`GrpcServer` installs), so every log line written while serving that call carries it
(`services.common.logs`), and so do the calls the server makes on the request's behalf: through
channels opened with `request_id_client_interceptors()`, or by passing `outgoing_metadata()`.
Tasks created while serving (a model load, a lease release) copy the context and keep the id.

The context variable is the one piece of module-level state here on purpose: it is how asyncio
carries a value from a handler into its log records and outgoing calls without passing it through
every function; its value belongs to each task's context, never to the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc

__all__ = [
    "REQUEST_ID_KEY",
    "RequestIdServerInterceptor",
    "clean_request_id",
    "current_request_id",
    "detached_context",
    "new_request_id",
    "outgoing_metadata",
    "request_id_client_interceptors",
    "request_id_scope",
]

# gRPC metadata keys are lowercase; as an HTTP header the name is case-insensitive (X-Request-ID).
REQUEST_ID_KEY = "x-request-id"
# Visible ASCII only (no spaces or control characters that could forge log lines), bounded.
_VALID_ID = re.compile(r"[\x21-\x7e]{1,128}")

_access_log = logging.getLogger("services.common.rpc")

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "modelrunner_request_id", default=None
)


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _REQUEST_ID.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | bytes | None) -> str | None:
    """The id if it is acceptable (1-128 visible ASCII characters), else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    value = value.strip()
    return value if _VALID_ID.fullmatch(value) else None


@contextlib.contextmanager
def request_id_scope(request_id: str | None) -> Iterator[None]:
    """Serve a block as request `request_id` (None: as no request)."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


def detached_context() -> contextvars.Context:
    """A copy of the current context without the request id: for a task started while serving a
    request that outlives it (a runner's exit watch), so that its later log lines are not
    attributed to that request."""
    context = contextvars.copy_context()
    context.run(_REQUEST_ID.set, None)
    return context


def outgoing_metadata(
    metadata: Iterable[tuple[str, str]] = (),
) -> tuple[tuple[str, str], ...] | None:
    """`metadata` plus the current request id, for a call made on the request's behalf; None
    when there is nothing to send."""
    request_id = _REQUEST_ID.get()
    pairs = tuple(pair for pair in metadata if pair[0] != REQUEST_ID_KEY)
    if request_id is not None:
        pairs += ((REQUEST_ID_KEY, request_id),)
    return pairs or None


# Server side ----------------------------------------------------------------------------------


def _incoming_id(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID_KEY:
            return clean_request_id(value)
    return None


def _status(context: Any, error: BaseException | None) -> str:
    code = context.code()
    if code is not None:
        return str(getattr(code, "name", code))
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


@contextlib.contextmanager
def _access_logged(method: str, context: Any, enabled: bool) -> Iterator[None]:
    """One line per call: method, status, duration (logged under the request id)."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        if enabled:
            elapsed = (time.perf_counter() - started) * 1000
            _access_log.info("%s %s %.1f ms", method, _status(context, error), elapsed)


def _in_scope(
    behavior: Callable[..., Any], request_id: str, method: str, access_log: bool
) -> Callable[..., Any]:
    """`behavior` run with the request id set, whichever shape the handler has."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            _REQUEST_ID.set(request_id)
            # Not reset: the generator may be finalized from another context, and the RPC's
            # task, whose context this is, ends with the call.
            with _access_logged(method, context, access_log):
                async for response in behavior(request, context):
                    yield response

        return stream

    if inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: Any) -> Any:
            with request_id_scope(request_id), _access_logged(method, context, access_log):
                return await behavior(request, context)

        return unary
    return behavior


_FACTORIES: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler[Any, Any]]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class RequestIdServerInterceptor(grpc.aio.ServerInterceptor):
    """Serves each call that carries `x-request-id` with that id set (see the module doc) and,
    with `access_log`, logs one INFO line for it when it ends: `<method> <status> <ms> ms`, so
    every service a request went through has a line with its id.

    Calls without one (heartbeats, health checks) get their handler unchanged, at no cost, and
    no log line.
    """

    def __init__(self, *, access_log: bool = True) -> None:
        self._access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        request_id = _incoming_id(handler_call_details)
        if handler is None or request_id is None:
            return handler
        attribute, factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
        behavior = getattr(handler, attribute)
        if behavior is None:
            return handler
        return factory(
            _in_scope(behavior, request_id, handler_call_details.method, self._access_log),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


# Client side ----------------------------------------------------------------------------------


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    request_id = _REQUEST_ID.get()
    if request_id is None:
        return details
    metadata = grpc.aio.Metadata(
        *((key, value) for key, value in (details.metadata or ()) if key != REQUEST_ID_KEY)
    )
    metadata.add(REQUEST_ID_KEY, request_id)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request_iterator)


def request_id_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a channel whose calls carry the current request id (if any).

    The returned call objects behave as plain ones (`read()`, `cancel()`, async iteration);
    measured on this code base, a unary call costs no more CPU through them than without.
    """
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()]
