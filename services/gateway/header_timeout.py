"""A deadline for reading each request's headers (GATEWAY_HEADER_TIMEOUT), which uvicorn lacks.

uvicorn's keep-alive timer only runs between requests: a client that connects and then sends
nothing, or trickles its headers a byte at a time (slowloris), holds a connection slot for ever,
and GATEWAY_MAX_CONCURRENCY of them lock everyone else out. Go's `ReadHeaderTimeout` (DMR: 10 s)
closes such connections; this does the same on top of uvicorn's httptools protocol: the clock
starts when the connection opens or the next request begins and stops when its headers are
complete. The body and a streamed answer are not limited here (the request timeout covers them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeaderTimeoutConfig", "header_timeout_protocol"]

_log = logging.getLogger(__name__)


class _HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        # Between requests uvicorn's own keep-alive timer decides; only a request (or a new
        # connection) still waiting for its headers is closed here.
        if self.cycle is not None and not self.cycle.response_complete:
            return
        _log.debug(
            "closing %s: no complete request headers within %.1fs", self.client, self.header_timeout
        )
        if not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing connections whose headers take over `seconds`."""
    return type("HeaderTimeoutProtocol", (_HeaderTimeoutProtocol,), {"header_timeout": seconds})


class HeaderTimeoutConfig(uvicorn.Config):
    """uvicorn's Config with `http="httptools"` served by the header-deadline protocol."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def load(self) -> None:
        super().load()
        if self.http == "httptools":
            self.http_protocol_class = header_timeout_protocol(self.header_timeout)
