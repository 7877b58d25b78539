"""Optional API keys and per-client rate limits, as one pure-ASGI guard inside the CORS guard.

With keys configured every route needs `Authorization: Bearer <key>`; on Anthropic routes
(`/anthropic/...` and `.../v1/messages...`) `x-api-key: <key>` works too, since Anthropic's SDKs
send that. Not guarded: CORS preflights (browsers never attach credentials to them) and the
paths in GATEWAY_AUTH_EXEMPT_PATHS, by default only `GET /`, the liveness ping that says nothing
but "running". `/metrics` needs a key like everything else unless it is listed there.

Keys are compared as SHA-256 digests with `hmac.compare_digest` against every key, with no early
exit, so neither timing nor length says which key nearly matched. A key is never logged nor echoed:
the client is known by the key's position (`key-2`), and the credential headers are removed
before the request reaches a route, so no route can forward the gateway's key upstream.

Rate limits (rate_limit.py) apply per key, or per client address when no keys are set. Token use
is read from the tail of each answer and charged against the client's next requests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import GatewayError, InvalidApiKey, RateLimited
from services.gateway.rate_limit import RateLimiter, retry_after_header
from services.gateway.responses import error_response
from services.gateway.usage import UsageScanner

__all__ = ["ApiKeys", "AuthGuard"]

_BEARER = "bearer"
_ANTHROPIC_PATH = re.compile(r"^/anthropic/|/v1/messages(/|$)")
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key"})
_CHALLENGE = 'Bearer realm="model-runner"'


class ApiKeys:
    """The configured keys, held as digests; empty means the gateway is open."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys if key)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, candidate: str) -> str | None:
        """`key-<n>` for the configured key `candidate` equals, else None; constant time."""
        probe = _digest(candidate)
        found = 0
        for index, digest in enumerate(self._digests, start=1):
            if hmac.compare_digest(probe, digest):
                found = index
        return f"key-{found}" if found else None


class AuthGuard:
    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys,
        limiter: RateLimiter,
        exempt_paths: Iterable[str] = ("/",),
    ) -> None:
        self._app = app
        self._keys = keys
        self._limiter = limiter
        self._exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_exempt(scope):
            await self._app(scope, receive, send)
            return
        if self._keys.enabled:
            token = _presented_key(scope)
            client = self._keys.identify(token) if token else None
            if client is None:
                await _refuse(
                    InvalidApiKey(
                        "Invalid API key"
                        if token
                        else "Missing API key: send 'Authorization: Bearer <key>'",
                        headers={
                            "WWW-Authenticate": _CHALLENGE
                            + (', error="invalid_token"' if token else "")
                        },
                    ),
                    scope,
                    receive,
                    send,
                )
                return
            scope = {
                **scope,
                "headers": [(k, v) for k, v in scope["headers"] if k not in _CREDENTIAL_HEADERS],
            }
        else:
            client = _client_address(scope)
        if not self._limiter.limits.enabled:
            await self._app(scope, receive, send)
            return
        wait = self._limiter.admit(client)
        if wait is not None:
            await _refuse(
                RateLimited(
                    "Rate limit reached for this API key; retry later",
                    headers={"Retry-After": retry_after_header(wait)},
                ),
                scope,
                receive,
                send,
            )
            return
        if self._limiter.limits.tokens_per_minute <= 0:
            await self._app(scope, receive, send)
            return
        scanner = UsageScanner()

        async def send_metered(message: Message) -> None:
            if message["type"] == "http.response.body":
                scanner.feed(message.get("body", b""))
            await send(message)

        try:
            await self._app(scope, receive, send_metered)
        finally:
            usage = scanner.usage()
            self._limiter.charge(client, usage.total_tokens if usage else 0)

    def _is_exempt(self, scope: Scope) -> bool:
        if scope["path"] in self._exempt:
            return True
        # A CORS preflight: browsers never attach credentials to it.
        return scope["method"] == "OPTIONS" and any(
            name == b"access-control-request-method" for name, _ in scope["headers"]
        )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _presented_key(scope: Scope) -> str:
    anthropic = _ANTHROPIC_PATH.search(scope["path"]) is not None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").strip().partition(" ")
            if scheme.lower() == _BEARER and token.strip():
                return token.strip()
        elif name == b"x-api-key" and anthropic:
            return bytes(value).decode("latin-1").strip()
    return ""


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"addr-{client[0]}" if client else "addr-local"


async def _refuse(err: GatewayError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(err)(scope, receive, send)
