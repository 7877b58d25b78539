"""DMR's CORS guard, as pure ASGI so it costs the hot path one header scan.

Browsers send `Origin`; other clients do not and pass untouched. A request whose Origin is not
allowed gets 403 (this is what stops a web page from driving the API through the user's browser).
Allowed: loopback origins on any port (DMR intends `http://localhost:*` but matches it literally),
plus every origin in DMR_ORIGINS; DMR_ORIGINS=* alone allows all. Preflights from allowed origins
get 204 with DMR's Allow-* headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import Forbidden, error_body

__all__ = ["CorsGuard", "OriginPolicy"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1"})
_WEB_SCHEMES = frozenset({"http", "https"})


class OriginPolicy:
    def __init__(self, extra_origins: Iterable[str]) -> None:
        origins = {origin.strip().rstrip("/").lower() for origin in extra_origins}
        origins.discard("")
        self.allow_all = origins == {"*"}
        self._origins = frozenset(origins - {"*"})

    def allows(self, origin: str) -> bool:
        if self.allow_all:
            return True
        normalized = origin.strip().rstrip("/").lower()
        if normalized in self._origins:
            return True
        try:
            parts = urlsplit(normalized)
            host = parts.hostname
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            return False
        return parts.scheme in _WEB_SCHEMES and host in _LOOPBACK_HOSTS


class CorsGuard:
    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self._app = app
        self._policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self._app(scope, receive, send)
            return
        if not self._policy.allows(origin):
            await _send_forbidden(send)
            return
        echo = (b"access-control-allow-origin", origin.encode("latin-1"))
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        echo,
                        (b"access-control-allow-credentials", b"true"),
                        (b"access-control-allow-methods", b"GET, POST, DELETE"),
                        (b"access-control-allow-headers", b"*"),
                        (b"vary", b"Origin"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        async def send_with_origin(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"access-control-allow-origin"
                ]
                headers.extend((echo, (b"vary", b"Origin")))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_with_origin)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _send_forbidden(send: Send) -> None:
    body = error_body(Forbidden("Origin not allowed"))
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
