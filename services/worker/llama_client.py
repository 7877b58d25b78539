"""HTTP to one llama-server over its Unix socket: health checks, metrics and forwarded requests.

The forwarding path is the hot path: bytes in, bytes out (`aiter_raw`), no parsing, no logging
per chunk. Every call has explicit timeouts and the connection pool is bounded (the vLLM router's
`timeout=None` plus unlimited connectors let one stalled backend hang everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.worker.errors import UpstreamError

__all__ = ["ClientLimits", "Endpoint", "LlamaClient", "UpstreamResponse"]

# The host part is ignored on a Unix socket; it only has to be a valid URL.
_BASE_URL = "http://llama-server"
# llama-server sometimes closes a connection that arrives right as a streamed answer ends, before
# reading the request (measured: 5 of 20 back-to-back requests; it never starts those tasks).
# httpcore reports exactly this message then, and only then, so resending is safe.
_NOT_READ_BY_SERVER = "Server disconnected without sending a response"
_SEND_ATTEMPTS = 3
_RESEND_DELAY = 0.02


class Endpoint(enum.Enum):
    """OpenAI-style endpoints and their llama-server paths."""

    CHAT_COMPLETIONS = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"


@dataclass(frozen=True)
class ClientLimits:
    connect_timeout: float
    # Longest silence allowed between two chunks of a streamed answer.
    stream_idle_timeout: float
    # A non-streamed answer arrives only when it is complete, so it gets a whole-request budget.
    request_timeout: float
    max_connections: int


class UpstreamResponse:
    """llama-server's answer, headers received, body not yet read."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def content_type(self) -> str:
        return str(self._response.headers.get("content-type", ""))

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body exactly as llama-server wrote it; UpstreamError if it breaks off or stalls."""
        raw = self._response.aiter_raw()
        try:
            async for chunk in raw:
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamError(
                "llama-server stopped sending mid-response (stream idle timeout)",
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"llama-server broke off the response: {exc}", connection_lost=True
            ) from exc
        finally:
            close = getattr(raw, "aclose", None)
            if close is not None:
                await close()


class LlamaClient:
    """One connection pool per runner, over the runner's Unix socket."""

    def __init__(self, socket_path: Path, limits: ClientLimits) -> None:
        self._limits = limits
        self._stream_timeout = httpx.Timeout(
            connect=limits.connect_timeout,
            read=limits.stream_idle_timeout,
            write=limits.stream_idle_timeout,
            pool=limits.stream_idle_timeout,
        )
        self._request_timeout = httpx.Timeout(
            connect=limits.connect_timeout,
            read=limits.request_timeout,
            write=limits.stream_idle_timeout,
            pool=limits.stream_idle_timeout,
        )
        self._client = httpx.AsyncClient(
            base_url=_BASE_URL,
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            timeout=self._stream_timeout,
            limits=httpx.Limits(
                max_connections=limits.max_connections,
                # A connection per request: a Unix socket connects in microseconds, and an idle
                # keep-alive connection would hold one of llama-server's few HTTP threads.
                max_keepalive_connections=0,
            ),
        )

    async def health(self, timeout: float) -> int | None:
        """GET /health's status code (503 while loading, 200 ready); None when unreachable."""
        try:
            response = await self._client.get("/health", timeout=timeout)
        except httpx.HTTPError:
            return None
        return response.status_code

    async def metrics(self, *, timeout: float, max_bytes: int) -> str:
        """GET /metrics (llama-server runs with --metrics): Prometheus text, within `timeout` s.

        UpstreamError when llama-server cannot be reached, answers other than 200, sends more
        than `max_bytes` or takes longer than `timeout` in all.
        """
        body = bytearray()
        try:
            async with asyncio.timeout(timeout):
                async with self._client.stream("GET", "/metrics", timeout=timeout) as response:
                    if response.status_code != 200:
                        raise UpstreamError(
                            f"llama-server answered GET /metrics with HTTP {response.status_code}"
                        )
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise UpstreamError(
                                f"llama-server's metrics exceed {max_bytes} bytes "
                                "(WORKER_METRICS_MAX_BYTES)"
                            )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise UpstreamError(
                f"llama-server did not answer GET /metrics within {timeout:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"GET /metrics from llama-server failed: {exc!r}") from exc
        return body.decode("utf-8", errors="replace")

    @contextlib.asynccontextmanager
    async def forward(
        self, endpoint: Endpoint, body: bytes, *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        """POST `body` to the endpoint; the response is closed when the block exits, however."""
        request = self._client.build_request(
            "POST",
            endpoint.value,
            content=body,
            headers={"content-type": "application/json"},
            timeout=self._stream_timeout if stream else self._request_timeout,
        )
        try:
            response = await self._send(request)
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"llama-server did not answer in time: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"llama-server is unreachable: {exc!r}", connection_lost=True
            ) from exc
        try:
            yield UpstreamResponse(response)
        finally:
            await response.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(1, _SEND_ATTEMPTS + 1):
            try:
                return await self._client.send(request, stream=True)
            except httpx.RemoteProtocolError as exc:
                if _NOT_READ_BY_SERVER not in str(exc) or attempt == _SEND_ATTEMPTS:
                    raise
            await asyncio.sleep(_RESEND_DELAY * attempt)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._client.aclose()
