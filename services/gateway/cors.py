"""DMR's CORS guard, as pure ASGI so it costs the hot path one header scan.

Browsers send `Origin`; other clients do not and pass untouched. A request whose Origin is not
allowed gets 403 (this is what stops a web page from driving the API through the user's browser).
Allowed by default: `localhost` and `127.0.0.1` over http or https on any port, as DMR's README
says for TCP mode. DMR_ORIGINS *replaces* that list (DMR's README: "customize allowed origins");
an entry may end in `:*` for any port, and `*` allows every origin (logged as a warning at
startup). In Unix-socket mode the app installs no guard at all: no browser reaches a socket.

Preflights from allowed origins get 204 with DMR's Allow-* headers, plus the requested headers
echoed, because the Fetch standard never lets the `*` wildcard cover `Authorization`: without the
echo a browser could not send an API key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import Forbidden, error_body

__all__ = ["DEFAULT_ORIGINS", "CorsGuard", "OriginPolicy"]

_log = logging.getLogger(__name__)

DEFAULT_ORIGINS = (
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
)
_ANY = "*"
_ANY_PORT = ":*"
_WEB_SCHEMES = frozenset({"http", "https"})
# Browsers only let a page read these response headers when the server names them.
_EXPOSED = b"Retry-After, X-Request-ID, WWW-Authenticate"


class OriginPolicy:
    """Which browser origins may call the gateway; `origins` empty means DEFAULT_ORIGINS."""

    def __init__(self, origins: Iterable[str]) -> None:
        listed = {origin.strip().rstrip("/").lower() for origin in origins}
        listed.discard("")
        if not listed:
            listed = set(DEFAULT_ORIGINS)
        self.allow_all = _ANY in listed
        self._exact = frozenset(o for o in listed if not o.endswith(_ANY_PORT) and o != _ANY)
        # scheme://host of the `:*` entries, matched against the origin without its port.
        self._any_port = frozenset(
            o.removesuffix(_ANY_PORT) for o in listed if o.endswith(_ANY_PORT)
        )

    def allows(self, origin: str) -> bool:
        if self.allow_all:
            return True
        normalized = origin.strip().rstrip("/").lower()
        if normalized in self._exact:
            return True
        try:
            parts = urlsplit(normalized)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            return False
        if parts.scheme not in _WEB_SCHEMES or not parts.netloc or parts.path:
            return False
        host = parts.netloc.rpartition(":")[0] if parts.port is not None else parts.netloc
        return f"{parts.scheme}://{host}" in self._any_port


class CorsGuard:
    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self._app = app
        self._policy = policy
        if policy.allow_all:
            _log.warning("DMR_ORIGINS=*: every web page the user's browser opens may call this API")

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
            requested = _header(scope, b"access-control-request-headers")
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        echo,
                        (b"access-control-allow-credentials", b"true"),
                        (b"access-control-allow-methods", b"GET, POST, DELETE"),
                        (
                            b"access-control-allow-headers",
                            f"*, {requested}".encode("latin-1") if requested else b"*",
                        ),
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
                headers.extend(
                    (echo, (b"access-control-expose-headers", _EXPOSED), (b"vary", b"Origin"))
                )
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
