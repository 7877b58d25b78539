"""HTTP to one llama-server over its Unix socket: health checks, metrics and forwarded requests.

The forwarding path is the hot path: bytes in, bytes out (`iter_any`), no parsing, no logging
per chunk. aiohttp rather than httpx because it costs well under half the CPU per streamed chunk
(measured on this path). Every call has explicit timeouts and the connection pool is bounded (the
vLLM router's `timeout=None` plus unlimited connectors let one stalled backend hang everything).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.worker.engine import Endpoint
from services.worker.errors import UpstreamError

__all__ = ["ClientLimits", "Endpoint", "LlamaClient", "UpstreamResponse"]

# The host part is ignored on a Unix socket; it only has to be a valid URL.
_BASE_URL = "http://llama-server"
# Identity: the body is passed on byte for byte, with no content-encoding header to go with it.
_FORWARD_HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}
_SEND_ATTEMPTS = 3
_RESEND_DELAY = 0.02


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

    def __init__(self, response: aiohttp.ClientResponse, timeout_reason: str) -> None:
        self._response = response
        self._timeout_reason = timeout_reason

    @property
    def status_code(self) -> int:
        return self._response.status

    @property
    def content_type(self) -> str:
        return self._response.headers.get("content-type", "")

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body exactly as llama-server wrote it; UpstreamError if it breaks off or stalls."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        # First: aiohttp's read timeout errors are ClientErrors too.
        except TimeoutError as exc:
            raise UpstreamError(
                f"llama-server stopped sending mid-response ({self._timeout_reason})"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"llama-server broke off the response: {exc!r}", connection_lost=True
            ) from exc


class LlamaClient:
    """One connection pool per runner, over the runner's Unix socket; needs a running loop."""

    def __init__(self, socket_path: Path, limits: ClientLimits) -> None:
        self._limits = limits
        # aiohttp's `connect` covers waiting for a free connection plus connecting.
        pool_and_connect = limits.stream_idle_timeout + limits.connect_timeout
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=pool_and_connect,
            sock_connect=limits.connect_timeout,
            # Also bounds the wait for the response head.
            sock_read=limits.stream_idle_timeout,
        )
        self._request_timeout = aiohttp.ClientTimeout(
            total=limits.request_timeout,
            connect=pool_and_connect,
            sock_connect=limits.connect_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(
                path=str(socket_path),
                limit=limits.max_connections,
                # A connection per request: a Unix socket connects in microseconds, an idle
                # keep-alive connection would hold one of llama-server's few HTTP threads, and
                # llama-server drops requests sent on a connection reused right after a stream.
                force_close=True,
            ),
            timeout=self._stream_timeout,
            # The body is forwarded byte for byte, never decoded here.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def health(self, timeout: float) -> int | None:
        """GET /health's status code (503 while loading, 200 ready); None when unreachable."""
        try:
            async with self._session.get(
                f"{_BASE_URL}/health", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return response.status
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def metrics(self, *, timeout: float, max_bytes: int) -> str:
        """GET /metrics (llama-server runs with --metrics): Prometheus text, within `timeout` s.

        UpstreamError when llama-server cannot be reached, answers other than 200, sends more
        than `max_bytes` or takes longer than `timeout` in all.
        """
        body = bytearray()
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(
                    f"{_BASE_URL}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)
                ) as response:
                    if response.status != 200:
                        raise UpstreamError(
                            f"llama-server answered GET /metrics with HTTP {response.status}"
                        )
                    async for chunk in response.content.iter_any():
                        body += chunk
                        if len(body) > max_bytes:
                            raise UpstreamError(
                                f"llama-server's metrics exceed {max_bytes} bytes "
                                "(WORKER_METRICS_MAX_BYTES)"
                            )
        except TimeoutError as exc:
            raise UpstreamError(
                f"llama-server did not answer GET /metrics within {timeout:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"GET /metrics from llama-server failed: {exc!r}") from exc
        return body.decode("utf-8", errors="replace")

    @contextlib.asynccontextmanager
    async def forward(
        self, endpoint: Endpoint, body: bytes, *, stream: bool
    ) -> AsyncIterator[UpstreamResponse]:
        """POST `body` to the endpoint; the response is closed when the block exits, however."""
        if stream:
            timeout = self._stream_timeout
            timeout_reason = (
                f"nothing for {self._limits.stream_idle_timeout:g}s, WORKER_STREAM_IDLE_TIMEOUT"
            )
        else:
            timeout = self._request_timeout
            timeout_reason = (
                f"not complete within {self._limits.request_timeout:g}s, WORKER_REQUEST_TIMEOUT"
            )
        try:
            response = await self._send(_BASE_URL + endpoint.value, body, timeout)
        # First: aiohttp's connect and read timeout errors are ClientErrors too.
        except TimeoutError as exc:
            raise UpstreamError(
                f"llama-server did not answer in time ({timeout_reason}): {exc!r}"
            ) from exc
        except aiohttp.ServerDisconnectedError as exc:
            if _closed_unread(exc):
                message = (
                    f"llama-server closed the connection without sending a response "
                    f"({_SEND_ATTEMPTS} attempts)"
                )
            else:
                message = f"llama-server closed the connection mid-response head: {exc!r}"
            raise UpstreamError(message, connection_lost=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"llama-server is unreachable: {exc!r}", connection_lost=True
            ) from exc
        try:
            yield UpstreamResponse(response, timeout_reason)
        finally:
            # Closes the connection too, so llama-server stops a generation nobody reads.
            response.close()

    async def _send(
        self, url: str, body: bytes, timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        for attempt in range(1, _SEND_ATTEMPTS + 1):
            try:
                return await self._session.post(
                    url, data=body, headers=_FORWARD_HEADERS, timeout=timeout
                )
            except aiohttp.ServerDisconnectedError as exc:
                if not _closed_unread(exc) or attempt == _SEND_ATTEMPTS:
                    raise
            await asyncio.sleep(_RESEND_DELAY * attempt)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._session.close()


def _closed_unread(exc: aiohttp.ServerDisconnectedError) -> bool:
    """Whether llama-server closed the connection before sending a single byte of a response.

    It does that to a request arriving right as a streamed answer ends (measured: 5 of 20
    back-to-back requests) and never starts that request, so resending is safe. aiohttp carries
    the partly parsed response head as the message once any byte arrived, a plain string before.
    """
    return isinstance(exc.message, str)
