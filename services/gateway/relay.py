"""The ASGI response that runs one inference and relays the worker's bytes to the client.

It is a response object rather than a route body so that the HTTP status is chosen only once the
worker's head has arrived, and so that one watcher covers the whole request: if the client goes
away while the request waits for a worker, a cold load, the head, or the next token, the work is
cancelled and with it the gRPC call, so the worker stops llama-server's generation.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.gateway import errors
from services.gateway.inference import GenerateStream, Inference, InferenceRequest
from services.gateway.upstream import llama_error

__all__ = ["InferenceResponse"]

_log = logging.getLogger(__name__)

_JSON = b"application/json"
_EVENT_STREAM = b"text/event-stream"


class InferenceResponse(Response):
    """Assign -> Generate -> relay, as one ASGI response."""

    def __init__(self, inference: Inference, request: InferenceRequest) -> None:
        # Response.__init__ would render a body and headers; both come from the worker instead.
        self.status_code = 200
        self.background = None
        self._inference = inference
        self._request = request
        # Set just before the last message is sent: from then on a disconnect is the normal end
        # of the exchange, and cleanup must not be interrupted.
        self._finishing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with asyncio.TaskGroup() as group:
            work = group.create_task(self._respond(send))
            watcher = group.create_task(self._cancel_on_disconnect(receive, work))
            work.add_done_callback(lambda _: watcher.cancel())
        if self.background is not None:
            await self.background()

    async def _cancel_on_disconnect(self, receive: Receive, work: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._finishing:
                    _log.info(
                        "request %s: client disconnected; cancelling", self._request.request_id
                    )
                    work.cancel()
                return

    async def _respond(self, send: Send) -> None:
        try:
            stream = await self._inference.open(self._request)
        except errors.GatewayError as err:
            await self._send_error(send, err)
            return
        try:
            if self._request.stream and 200 <= stream.head.status_code < 300:
                await self._relay(send, stream)
            else:
                await self._collect(send, stream)
        finally:
            await stream.close()

    async def _relay(self, send: Send, stream: GenerateStream) -> None:
        """Chunks go out exactly as they came in: no parsing, no re-encoding, no buffering."""
        content_type = stream.head.content_type.encode("latin-1") or _EVENT_STREAM
        await send(
            {
                "type": "http.response.start",
                "status": stream.head.status_code,
                "headers": [
                    (b"content-type", content_type),
                    (b"cache-control", b"no-cache"),
                    (b"x-worker-id", stream.worker_id.encode("latin-1", "replace")),
                ],
            }
        )
        try:
            while (chunk := await stream.read()) is not None:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except grpc.aio.AioRpcError as exc:
            err = errors.from_rpc_error(
                exc, errors.RpcStep.GENERATE, retry_after=self._inference.settings.retry_after
            )
            _log.warning(
                "request %s: stream failed after the head: %s",
                self._request.request_id,
                err.message,
            )
            # The 200 head is gone already; tell the client in the stream's own language.
            await send(
                {
                    "type": "http.response.body",
                    "body": errors.sse_error_event(err),
                    "more_body": True,
                }
            )
        self._finishing = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _collect(self, send: Send, stream: GenerateStream) -> None:
        """A non-streaming answer (or an error head) is sent whole, with llama-server's status."""
        limit = self._inference.settings.max_response_bytes
        parts: list[bytes] = []
        size = 0
        try:
            while (chunk := await stream.read()) is not None:
                size += len(chunk)
                if size > limit:
                    raise errors.UpstreamError(
                        f"response is larger than GATEWAY_MAX_RESPONSE_BYTES ({limit} bytes)"
                    )
                parts.append(chunk)
        except grpc.aio.AioRpcError as exc:
            await self._send_error(
                send,
                errors.from_rpc_error(
                    exc, errors.RpcStep.GENERATE, retry_after=self._inference.settings.retry_after
                ),
            )
            return
        except errors.GatewayError as err:
            await self._send_error(send, err)
            return
        body = b"".join(parts)
        if stream.head.status_code >= 500:
            refusal = llama_error(stream.head.status_code, body)
            if refusal.status_code < 500:
                # Bad input that llama-server calls a server error (upstream.py).
                await self._send_error(send, refusal)
                return
        content_type = stream.head.content_type.encode("latin-1") or _JSON
        self._finishing = True
        await send(
            {
                "type": "http.response.start",
                "status": stream.head.status_code,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"x-worker-id", stream.worker_id.encode("latin-1", "replace")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_error(self, send: Send, err: errors.GatewayError) -> None:
        if err.status_code >= 500:
            _log.warning(
                "request %s (model %r): %d %s",
                self._request.request_id,
                self._request.model,
                err.status_code,
                err.message,
            )
        body = errors.error_body(err)
        headers = [
            (b"content-type", _JSON),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        headers.extend(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in err.headers.items()
        )
        self._finishing = True
        await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
