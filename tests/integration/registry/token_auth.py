"""Docker Hub style token auth for the real docker-registry: a small token endpoint that signs
JWTs the registry verifies, and a registry configured to trust it.

The registry (CNCF distribution 2.8) answers 401 with `WWW-Authenticate: Bearer realm=...,
service=...,scope=...`; the client asks the realm for a token (with Basic credentials, or none)
and retries with `Authorization: Bearer <jwt>`. The registry checks the token's signature against
`rootcertbundle` (the signing certificate travels in the JWT header's `x5c`), its issuer,
audience, lifetime and the `access` claim. Signing uses the `openssl` command (RS256 is
RSASSA-PKCS1-v1_5 over SHA-256, which `openssl dgst -sha256 -sign` produces), so the test needs no
JWT library.

Grants: the user (USER/PASSWORD) gets pull and push on every repository; anonymous clients get
pull on repositories under `public/` only, as Docker Hub grants anonymous pulls of public images.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.processes import free_port

from .conftest import PASSWORD, REGISTRY_BINARY, USER, DockerRegistry

__all__ = ["ISSUER", "SERVICE", "TokenRegistry", "TokenServer", "token_registry"]

ISSUER = "model-runner-test-issuer"
SERVICE = "model-runner-test-registry"
_TOKEN_LIFETIME = 300
_OPENSSL_TIMEOUT = 30


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """An RSA key and its self-signed certificate, made with `openssl`."""

    key: Path
    certificate: Path

    @classmethod
    def create(cls, root: Path) -> SigningKey:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("openssl is not installed")
        key, certificate = root / "token.key", root / "token.crt"
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=model-runner-test-token-issuer"),
                *("-keyout", str(key), "-out", str(certificate)),
            ],
            check=True,
            capture_output=True,
            timeout=_OPENSSL_TIMEOUT,
        )
        return cls(key=key, certificate=certificate)

    def certificate_der(self) -> bytes:
        pem = self.certificate.read_text()
        body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        return base64.b64decode("".join(body.split()))

    def sign(self, claims: dict[str, object]) -> str:
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self.certificate_der()).decode()],
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
            timeout=_OPENSSL_TIMEOUT,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"


@dataclass
class TokenServer:
    """The token endpoint (`GET /token?service=&scope=`), in a thread of the test process."""

    signing_key: SigningKey
    requests: list[dict[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/token"

    def grant(self, user: str | None, scope: str) -> list[dict[str, object]]:
        """The access a token for `user` (None: anonymous) holds for the requested scope."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return []
        wanted = [action for action in actions.split(",") if action]
        if user == USER:
            allowed = [action for action in wanted if action in {"pull", "push"}]
        elif name.startswith("public/"):
            allowed = [action for action in wanted if action == "pull"]
        else:
            allowed = []
        return [{"type": "repository", "name": name, "actions": allowed}] if allowed else []

    def issue(self, user: str | None, scope: str) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + _TOKEN_LIFETIME,
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self.grant(user, scope),
        }
        return self.signing_key.sign(claims)

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                user: str | None = None
                authorization = self.headers.get("Authorization", "")
                if authorization.startswith("Basic "):
                    supplied = base64.b64decode(authorization[6:]).decode(errors="replace")
                    if supplied != f"{USER}:{PASSWORD}":
                        self._answer(401, {"details": "incorrect username or password"})
                        return
                    user = USER
                server.requests.append({"path": url.path, "user": user or "", **query})
                if url.path != "/token" or query.get("service") != SERVICE:
                    self._answer(400, {"details": "unknown service"})
                    return
                token = server.issue(user, query.get("scope", ""))
                self._answer(200, {"token": token, "expires_in": _TOKEN_LIFETIME})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: pytest shows failures, not every token request."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class TokenRegistry(DockerRegistry):
    """docker-registry whose auth is the token endpoint's signed JWTs."""

    realm: str = ""
    root_certificate: Path | None = None

    def _config(self) -> str:
        return super()._config() + (
            "auth:\n  token:\n"
            f"    realm: {self.realm}\n"
            f"    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n"
            f"    rootcertbundle: {self.root_certificate}\n"
        )


@contextlib.contextmanager
def token_registry(root: Path) -> Iterator[tuple[TokenRegistry, TokenServer]]:
    """A token endpoint and a registry trusting it; both stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    if not Path(REGISTRY_BINARY).is_file():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    tokens = TokenServer(SigningKey.create(root))
    tokens.start()
    try:
        registry = TokenRegistry(
            root=root,
            port=free_port(),
            realm=tokens.realm,
            root_certificate=tokens.signing_key.certificate,
        )
        registry.start()
        try:
            yield registry, tokens
        finally:
            registry.stop()
    finally:
        tokens.stop()
