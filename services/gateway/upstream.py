"""llama-server's OpenAI answers as parsed JSON, for the routes that translate them (Ollama,
Anthropic, the Responses API).

The OpenAI routes relay bytes untouched (relay.py); a translating route instead needs the answer
as objects: one JSON document, or the stream's `data:` events one by one. Both go through the same
hot path (`Inference.open`: Assign, Generate, one retry before the head) and release the lease on
every exit. A non-2xx answer from llama-server becomes a GatewayError carrying its status and
message, which each API then renders in its own error shape; a failure after a streamed head is
raised from the iterator as UpstreamError, so the route can end its stream in its own format.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import orjson

from services.gateway import errors
from services.gateway.inference import GenerateStream, Inference, InferenceRequest

__all__ = ["UpstreamAnswer", "call_json", "llama_error", "open_events"]

# SSE events are separated by a blank line; llama-server writes "\n\n".
_EVENT_END = b"\n\n"


class UpstreamAnswer:
    """An open streamed answer: iterate `events()` once, then `close()`."""

    def __init__(
        self, stream: GenerateStream, retry_after: float, max_event_bytes: int = 1 << 20
    ) -> None:
        self._stream = stream
        self._retry_after = retry_after
        # One event is buffered whole before it is parsed; this bounds that buffer.
        self._max_event_bytes = max_event_bytes
        self.worker_id = stream.worker_id

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Each `data:` JSON object until `[DONE]` or the end of the stream."""
        async with contextlib.aclosing(self._data()) as payloads:
            async for data in payloads:
                if data == b"[DONE]":
                    return
                parsed = _object(data)
                if "error" in parsed and len(parsed) == 1:
                    raise errors.UpstreamError(_message(parsed))
                yield parsed

    async def _data(self) -> AsyncGenerator[bytes, None]:
        """The payload of each `data:` line, events reassembled across chunk boundaries."""
        buffer = b""
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for chunk in chunks:
                buffer += chunk
                while (end := buffer.find(_EVENT_END)) >= 0:
                    event, buffer = buffer[:end], buffer[end + len(_EVENT_END) :]
                    for data in _data_lines(event):
                        yield data
                if len(buffer) > self._max_event_bytes:
                    raise errors.UpstreamError(
                        f"llama-server sent an event larger than {self._max_event_bytes} bytes"
                    )
        # A stream may end without the blank line after its last event; that event still counts.
        for data in _data_lines(buffer):
            yield data

    async def close(self) -> None:
        await self._stream.close()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The raw body as llama-server wrote it."""
        read = self._stream.read
        try:
            while (chunk := await read()) is not None:
                if chunk:
                    yield chunk
        except grpc.aio.AioRpcError as exc:
            raise errors.from_rpc_error(
                exc, errors.RpcStep.GENERATE, retry_after=self._retry_after
            ) from None


@contextlib.asynccontextmanager
async def open_events(
    inference: Inference, request: InferenceRequest
) -> AsyncIterator[UpstreamAnswer]:
    """A streamed chat/completion (`request.stream` must be true); the lease goes back on exit."""
    stream = await inference.open(request)
    settings = inference.settings
    answer = UpstreamAnswer(stream, settings.retry_after, settings.max_response_bytes)
    try:
        if not 200 <= stream.head.status_code < 300:
            raise llama_error(stream.head.status_code, await _read_all(answer))
        yield answer
    finally:
        await answer.close()


async def call_json(inference: Inference, request: InferenceRequest) -> dict[str, Any]:
    """A non-streamed answer as one JSON object; llama-server's error answers raise."""
    stream = await inference.open(request)
    answer = UpstreamAnswer(stream, inference.settings.retry_after)
    try:
        body = await _read_all(answer, limit=inference.settings.max_response_bytes)
    finally:
        await answer.close()
    if not 200 <= stream.head.status_code < 300:
        raise llama_error(stream.head.status_code, body)
    return _object(body)


async def _read_all(answer: UpstreamAnswer, *, limit: int = 1 << 20) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in answer.chunks():
        size += len(chunk)
        if size > limit:
            raise errors.UpstreamError(f"the answer is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


# llama-server answers 500 to some requests it cannot parse (its parsers throw runtime_error,
# which it reports as a server error): messages or tools of the wrong shape, image parts for a
# model without a projector. They are the client's mistake: 400, so clients fix, not retry, them.
_CLIENT_MISTAKES = ("Failed to parse", "image input is not supported")


def _data_lines(event: bytes) -> list[bytes]:
    return [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]


def _object(data: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise errors.UpstreamError("llama-server answered with invalid JSON") from None
    if not isinstance(parsed, dict):
        raise errors.UpstreamError("llama-server answered with a JSON value that is not an object")
    return parsed


def _message(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return "llama-server failed"


def llama_error(status: int, body: bytes) -> errors.GatewayError:
    """llama-server's own error answer, with its status, for the route to render; 400 for the
    bad input it answers as a server error (_CLIENT_MISTAKES)."""
    try:
        message = _message(_object(body))
    except errors.UpstreamError:
        message = body.decode(errors="replace")[:500] or f"llama-server answered {status}"
    if status >= 500 and message.startswith(_CLIENT_MISTAKES):
        status = 400
    kind = errors.InvalidRequest if 400 <= status < 500 else errors.UpstreamError
    err: errors.GatewayError = kind(message)
    err.status_code = status
    return err
