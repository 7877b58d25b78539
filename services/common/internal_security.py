"""The closed internal plane: optional mutual TLS and a shared bearer token between services.

Internal gRPC (registry, scheduler, workers; the gateway as a client) binds to loopback by default.
Once it listens on a network, anyone who can reach a port could register a worker or pull blobs;
two independent locks close that:

- mutual TLS (`MODEL_RUNNER_TLS_CA`, `MODEL_RUNNER_TLS_CERT`, `MODEL_RUNNER_TLS_KEY`): every
  server demands a client certificate signed by the CA, and every client checks the server's.
- a shared token (`MODEL_RUNNER_INTERNAL_TOKEN`, or `MODEL_RUNNER_INTERNAL_TOKEN_FILE` so it need
  not sit in the environment): clients send `authorization: Bearer <token>`, servers answer
  UNAUTHENTICATED to calls without it.

The standard health service stays open to token-less calls so orchestrator probes keep working
(TLS, when on, still applies to them: a probe needs a certificate too). The token is never logged
and never part of a repr.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from services.common.env import SettingError, env_str

__all__ = [
    "AUTHORIZATION_KEY",
    "HEALTH_METHOD_PREFIX",
    "InternalSecurity",
    "TokenClientInterceptors",
    "TokenServerInterceptor",
]

AUTHORIZATION_KEY = "authorization"
# Probes (Kubernetes, compose, the stack launcher) carry no token.
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
_BEARER = "Bearer "
# A token is a secret, not a document; this bounds what a token file may make us read.
_MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True)
class InternalSecurity:
    """How this process guards its internal gRPC servers and authenticates its channels.

    The default (no TLS, no token) is the open plane, fit for loopback only.
    """

    ca_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    # Certificates name services by DNS name; this lets a fleet sharing one certificate reach
    # peers by IP address (gRPC's ssl_target_name_override). Empty: check the dialled host.
    server_name: str = ""
    token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InternalSecurity:
        paths = {
            name: env_str(env, name, "")
            for name in ("MODEL_RUNNER_TLS_CA", "MODEL_RUNNER_TLS_CERT", "MODEL_RUNNER_TLS_KEY")
        }
        given = [name for name, value in paths.items() if value]
        if given and len(given) != len(paths):
            missing = ", ".join(name for name in paths if name not in given)
            raise SettingError(f"mutual TLS needs all three of CA, cert and key; missing {missing}")
        token = env.get("MODEL_RUNNER_INTERNAL_TOKEN", "").strip()
        token_file = env_str(env, "MODEL_RUNNER_INTERNAL_TOKEN_FILE", "")
        if token and token_file:
            raise SettingError(
                "set MODEL_RUNNER_INTERNAL_TOKEN or MODEL_RUNNER_INTERNAL_TOKEN_FILE, not both"
            )
        if token_file:
            token = _read_token(Path(token_file).expanduser())
        security = cls(
            ca_path=_path(paths["MODEL_RUNNER_TLS_CA"]),
            cert_path=_path(paths["MODEL_RUNNER_TLS_CERT"]),
            key_path=_path(paths["MODEL_RUNNER_TLS_KEY"]),
            server_name=env_str(env, "MODEL_RUNNER_TLS_SERVER_NAME", ""),
            token=token,
        )
        security.validate()
        return security

    def validate(self) -> None:
        if self.token and not all(0x21 <= ord(char) <= 0x7E for char in self.token):
            # gRPC metadata values must be printable ASCII; a space would also split the header.
            raise SettingError("the internal token must be printable ASCII without spaces")
        for path in (self.ca_path, self.cert_path, self.key_path):
            if path is not None:
                _read_file(path)

    @property
    def tls(self) -> bool:
        return self.ca_path is not None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials that demand a CA-signed client certificate; None: plain TCP."""
        if not self.tls:
            return None
        key, cert, ca = self._pem()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials presenting our certificate and trusting only the CA; None: plain TCP."""
        if not self.tls:
            return None
        key, cert, ca = self._pem()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.tls and self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []

    def server_interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        return (TokenServerInterceptor(self.token),) if self.token else ()

    def client_interceptors(self) -> tuple[grpc.aio.ClientInterceptor, ...]:
        return TokenClientInterceptors(self.token).all() if self.token else ()

    def _pem(self) -> tuple[bytes, bytes, bytes]:
        assert self.ca_path and self.cert_path and self.key_path
        return _read_file(self.key_path), _read_file(self.cert_path), _read_file(self.ca_path)


def _path(raw: str) -> Path | None:
    return Path(raw).expanduser() if raw else None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingError(f"cannot read {path}: {exc.strerror}") from exc


def _read_token(path: Path) -> str:
    data = _read_file(path)
    if len(data) > _MAX_TOKEN_BYTES:
        raise SettingError(f"token file {path} is larger than {_MAX_TOKEN_BYTES} bytes")
    token = data.decode("ascii", errors="replace").strip()
    if not token:
        raise SettingError(f"token file {path} is empty")
    return token


# Server side ----------------------------------------------------------------------------------


def _presented_token(details: grpc.HandlerCallDetails) -> bytes:
    for key, value in details.invocation_metadata or ():
        if key == AUTHORIZATION_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            if text.startswith(_BEARER):
                return text[len(_BEARER) :].strip().encode("ascii", "replace")
    return b""


def _rejecting(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape that aborts before reading the request."""

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid internal token")

    if handler.request_streaming and handler.response_streaming:
        factory = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.unary_unary_rpc_method_handler
    return factory(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class TokenServerInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED to every call but health checks unless it carries the token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty token would admit everyone")
        self._token = token.encode("ascii")

    def __repr__(self) -> str:
        return "TokenServerInterceptor(token=<hidden>)"

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        # Constant time, so response timing does not reveal how much of a guess was right.
        if hmac.compare_digest(_presented_token(handler_call_details), self._token):
            return handler
        return _rejecting(handler)


# Client side ----------------------------------------------------------------------------------


class TokenClientInterceptors:
    """Adds `authorization: Bearer <token>` to every call of a channel, of every shape."""

    def __init__(self, token: str) -> None:
        self._header = f"{_BEARER}{token}"

    def __repr__(self) -> str:
        return "TokenClientInterceptors(token=<hidden>)"

    def with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(
            *((key, value) for key, value in (details.metadata or ()) if key != AUTHORIZATION_KEY)
        )
        metadata.add(AUTHORIZATION_KEY, self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    def all(self) -> tuple[grpc.aio.ClientInterceptor, ...]:
        # grpc.aio files each interceptor under the first call shape it is an instance of, so
        # every shape needs its own object.
        return (
            _UnaryUnary(self),
            _UnaryStream(self),
            _StreamUnary(self),
            _StreamStream(self),
        )


class _Forwarding:
    """The one body every call shape shares: the request (or request iterator) passes through,
    the call details gain the token."""

    def __init__(self, owner: TokenClientInterceptors) -> None:
        self._owner = owner

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token=<hidden>)"

    async def _forward(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._owner.with_token(client_call_details), request)

    async def _forward_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self._forward(continuation, client_call_details, request_iterator)


class _UnaryUnary(_Forwarding, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _Forwarding._forward


class _UnaryStream(_Forwarding, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _Forwarding._forward


class _StreamUnary(_Forwarding, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _Forwarding._forward_stream


class _StreamStream(_Forwarding, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _Forwarding._forward_stream
