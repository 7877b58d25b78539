"""Upstream OCI registries: endpoints, auth challenges, retries, manifests and blob calls.

The only module that imports oras. oras-py's own request path is synchronous `requests` with no
timeouts and a retry decorator that retries every failure for minutes (research oci.md §1,
limitations 6-8), and its basic backend fails without credentials; so HTTP goes through httpx here,
with timeouts on every call and bounded tenacity retries for transient failures only (network
errors, 429, 5xx; never other 4xx). oras supplies the `WWW-Authenticate` parameter parsing, the
Basic credential encoding and the manifest media types.

A `RepositorySession` talks to one repository with one set of credentials and caches the
Authorization it earned (Basic, or a Bearer token from the challenge's realm); `auth_headers()`
hands it to the blob transfers in transfer.py and push.py, and `authenticate()` answers a 401's
`WWW-Authenticate` header whichever client got it, so auth logic lives only here. Blob downloads
use their own HTTP client (transfer.py); `ConnectionFailure` is how it reports network failures
so that they are retried and mapped like httpx's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
import oras.auth.utils as oras_auth  # type: ignore[import-untyped]
import oras.defaults as oras_defaults  # type: ignore[import-untyped]
import tenacity

from services.common.reference import DEFAULT_REGISTRY
from services.registry.config import RemoteSettings
from services.registry.credentials import Credentials
from services.registry.errors import (
    InvalidArgument,
    RegistryUnavailable,
    RemoteDigestMismatch,
    RemoteNotFound,
    RemoteProtocolError,
    Unauthenticated,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "Challenge",
    "ConnectionFailure",
    "Endpoint",
    "RemoteManifest",
    "RepositorySession",
    "TransientStatus",
    "check_status",
    "error_detail",
    "parse_challenge",
    "pull_endpoints",
    "raise_for_status",
    "resolve_endpoint",
    "retrying",
    "unavailable_on_transport",
]

_log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join(
    [
        oras_defaults.default_manifest_media_type,
        oras_defaults.docker_manifest_media_type,
        oras_defaults.default_index_media_type,
        oras_defaults.docker_manifest_list_media_type,
    ]
)
_DOCKER_HUB_API_HOST = str(oras_defaults.registry.default_v2_registry["host"])
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Endpoint:
    # As written in references ("index.docker.io", "127.0.0.1:5000").
    registry: str
    # Where the API answers ("registry-1.docker.io" for Docker Hub).
    api_host: str
    scheme: str

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.api_host}"


def resolve_endpoint(registry: str, settings: RemoteSettings) -> Endpoint:
    api_host = _DOCKER_HUB_API_HOST if registry == DEFAULT_REGISTRY else registry
    scheme = "http" if settings.is_insecure(registry) else "https"
    return Endpoint(registry=registry, api_host=api_host, scheme=scheme)


def pull_endpoints(registry: str, settings: RemoteSettings) -> tuple[Endpoint, ...]:
    """Where a pull from `registry` is tried, in order: its mirrors, then the registry itself.

    A mirror serves the same repository paths as the upstream (a pull-through cache), so only
    the host changes; its scheme follows the same loopback/INSECURE_REGISTRY rule.
    """
    hosts = (*settings.mirrors_for(registry), registry)
    return tuple(resolve_endpoint(host, settings) for host in hosts)


@dataclass(frozen=True)
class Challenge:
    scheme: str
    realm: str = ""
    service: str = ""
    scope: str = ""


def parse_challenge(header: str) -> Challenge:
    """`Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`."""
    scheme = header.strip().partition(" ")[0].lower()
    parsed = oras_auth.parse_auth_header(header)
    return Challenge(
        scheme=scheme,
        realm=parsed.realm or "",
        service=parsed.service or "",
        scope=parsed.scope or "",
    )


class TransientStatus(Exception):
    """An upstream answer worth retrying (429, 5xx); becomes RegistryUnavailable at the end."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ConnectionFailure(Exception):
    """A network failure (refused, reset, timed out, cut mid-body) seen by an HTTP client other
    than httpx; retried like httpx.TransportError, then RegistryUnavailable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def error_detail(body: bytes, fallback: str) -> str:
    """The first OCI error of an error body (`CODE: message`), else `fallback`."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except Exception:  # the body is the registry's; any shape is possible
        return fallback


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Map an unsuccessful answer to the registry's error tree (OCI codes in the message)."""
    if response.status_code >= 400:
        fallback = response.reason_phrase or str(response.status_code)
        check_status(response.status_code, what, error_detail(response.content, fallback))


def check_status(status: int, what: str, detail: str) -> None:
    """`raise_for_status` for any client: the status and the error body's `detail`."""
    if status < 400:
        return
    if status == 404:
        raise RemoteNotFound(f"{what} not found: {detail}")
    if status in (401, 403):
        raise Unauthenticated(f"{what}: access denied by the registry ({detail})")
    if status in _TRANSIENT_STATUS:
        raise TransientStatus(f"{what}: registry answered {status} ({detail})")
    if status == 400:
        raise InvalidArgument(f"{what}: registry refused the request ({detail})")
    raise RemoteProtocolError(f"{what}: unexpected registry answer {status} ({detail})")


def retrying(settings: RemoteSettings) -> tenacity.AsyncRetrying:
    """Bounded retries with exponential backoff and jitter, for transient failures only."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(
            (httpx.TransportError, ConnectionFailure, TransientStatus)
        ),
        stop=tenacity.stop_after_attempt(settings.attempts),
        wait=tenacity.wait_exponential_jitter(
            multiplier=settings.retry_initial_wait,
            max=settings.retry_max_wait,
            jitter=settings.retry_initial_wait,
        ),
        reraise=True,
    )


@contextlib.asynccontextmanager
async def unavailable_on_transport(endpoint: Endpoint) -> AsyncIterator[None]:
    """Turn the last transient failure into RegistryUnavailable naming the host."""
    try:
        yield
    except httpx.TransportError as exc:
        raise RegistryUnavailable(
            f"registry {endpoint.registry} is unreachable: {type(exc).__name__}: {exc}"
        ) from exc
    except ConnectionFailure as exc:
        raise RegistryUnavailable(f"registry {endpoint.registry} is unreachable: {exc}") from exc
    except TransientStatus as exc:
        raise RegistryUnavailable(str(exc)) from exc


@dataclass(frozen=True)
class RemoteManifest:
    data: bytes
    media_type: str
    digest: str


class RepositorySession:
    """One repository on one registry, one set of credentials, one cached Authorization."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: RemoteSettings,
        endpoint: Endpoint,
        repository: str,
        credentials: Credentials,
        *,
        push: bool = False,
    ) -> None:
        self._http = http
        self._settings = settings
        self.endpoint = endpoint
        self.repository = repository
        self._credentials = credentials
        self._scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        self._authorization = (
            f"Bearer {credentials.bearer_token}" if credentials.bearer_token else ""
        )

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    def url(self, path: str) -> str:
        return f"{self.endpoint.base_url}/v2/{self.repository}/{path}"

    def auth_headers(self) -> dict[str, str]:
        """The Authorization this session has earned so far (empty before any challenge)."""
        return {"Authorization": self._authorization} if self._authorization else {}

    async def authenticate(self, header: str) -> None:
        """Answer a 401's `WWW-Authenticate` challenge (`header`, possibly empty); raises
        Unauthenticated when nothing more can be tried."""
        if not header:
            raise Unauthenticated(f"{self.endpoint.registry} refused access with no challenge")
        challenge = parse_challenge(header)
        tried = self._authorization
        if challenge.scheme == "basic":
            if not self._credentials.has_basic:
                raise Unauthenticated(f"{self.endpoint.registry} requires credentials (HTTP Basic)")
            self._authorization = "Basic " + oras_auth.get_basic_auth(
                self._credentials.username, self._credentials.password
            )
        elif challenge.scheme == "bearer" and challenge.realm:
            if self._credentials.bearer_token:
                raise Unauthenticated(f"{self.endpoint.registry} rejected the bearer token")
            self._authorization = "Bearer " + await self._fetch_token(challenge)
        else:
            raise Unauthenticated(f"{self.endpoint.registry}: unsupported challenge {header!r}")
        if self._authorization == tried:
            raise Unauthenticated(
                f"{self.endpoint.registry} rejected the credentials for {self.repository}"
            )

    async def _fetch_token(self, challenge: Challenge) -> str:
        params = {"scope": challenge.scope or self._scope}
        if challenge.service:
            params["service"] = challenge.service
        headers = {"Accept": "application/json"}
        if self._credentials.has_basic:
            headers["Authorization"] = "Basic " + oras_auth.get_basic_auth(
                self._credentials.username, self._credentials.password
            )
        async with unavailable_on_transport(self.endpoint):
            async for attempt in retrying(self._settings):
                with attempt:
                    response = await self._http.get(challenge.realm, params=params, headers=headers)
                    raise_for_status(response, f"token from {challenge.realm}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RemoteProtocolError(f"token endpoint {challenge.realm} returned no token")
        return token

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A non-streamed call with auth and retries; the response is already checked."""
        async with unavailable_on_transport(self.endpoint):
            async for attempt in retrying(self._settings):
                with attempt:
                    response = await self._send_authenticated(
                        method, url, headers=headers, content=content, params=params
                    )
                    raise_for_status(response, what)
        return response

    async def _send_authenticated(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        content: bytes | None,
        params: Mapping[str, str] | None,
    ) -> httpx.Response:
        for _ in range(2):
            response = await self._http.request(
                method,
                url,
                headers={**(headers or {}), **self.auth_headers()},
                content=content,
                params=params,
            )
            if response.status_code != 401:
                return response
            await self.authenticate(response.headers.get("WWW-Authenticate", ""))
        return response

    async def get_manifest(self, reference: str, *, max_bytes: int) -> RemoteManifest:
        """The manifest's exact bytes, verified against its digest."""
        response = await self.request(
            "GET",
            self.url(f"manifests/{reference}"),
            what=f"manifest {self.endpoint.registry}/{self.repository}:{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        data = response.content
        if len(data) > max_bytes:
            raise RemoteProtocolError(f"manifest is larger than {max_bytes} bytes")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        expected = reference if reference.startswith("sha256:") else ""
        expected = expected or response.headers.get("Docker-Content-Digest", "")
        if expected.startswith("sha256:") and expected != digest:
            raise RemoteDigestMismatch(expected, digest)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return RemoteManifest(data=data, media_type=media_type, digest=digest)

    async def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        response = await self.request(
            "PUT",
            self.url(f"manifests/{reference}"),
            what=f"manifest upload to {self.repository}:{reference}",
            headers={"Content-Type": media_type},
            content=data,
        )
        return str(response.headers.get("Docker-Content-Digest", ""))

    async def blob_exists(self, digest: str) -> bool:
        try:
            await self.request("HEAD", self.url(f"blobs/{digest}"), what=f"blob {digest}")
        except RemoteNotFound:
            return False
        return True

    async def upload_blob(
        self, digest: str, size: int, body: Callable[[], AsyncIterable[bytes]]
    ) -> None:
        """POST a session, then one streamed PUT `?digest=` (retried with a fresh body)."""
        what = f"upload of blob {digest}"
        async with unavailable_on_transport(self.endpoint):
            async for attempt in retrying(self._settings):
                with attempt:
                    started = await self._send_authenticated(
                        "POST", self.url("blobs/uploads/"), headers=None, content=b"", params=None
                    )
                    raise_for_status(started, what)
                    location = started.headers.get("Location", "")
                    if not location:
                        raise RemoteProtocolError(f"{what}: no upload Location")
                    # `params=` would replace the Location's own query (its `_state`); merge.
                    upload_url = httpx.URL(urljoin(str(started.url), location))
                    response = await self._http.put(
                        upload_url.copy_merge_params({"digest": digest}),
                        headers={
                            **self.auth_headers(),
                            "Content-Type": "application/octet-stream",
                            "Content-Length": str(size),
                        },
                        content=body(),
                    )
                    raise_for_status(response, what)

    @contextlib.asynccontextmanager
    async def open_blob(self, digest: str, offset: int) -> AsyncIterator[httpx.Response]:
        """A streamed GET from `offset` (Range); the caller retries and checks 200 vs 206.

        For small blobs read whole (configs); the store's downloads go through transfer.py's
        BlobClient, which streams large bodies at a fraction of httpx's CPU cost.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = self.url(f"blobs/{digest}")
        for _ in range(2):
            request = self._http.build_request(
                "GET", url, headers={**headers, **self.auth_headers()}
            )
            response = await self._http.send(request, stream=True)
            try:
                if response.status_code == 401:
                    await self.authenticate(response.headers.get("WWW-Authenticate", ""))
                    continue
                if response.status_code == 416:
                    raise RemoteProtocolError(f"blob {digest}: range {offset}- not satisfiable")
                raise_for_status(response, f"blob {digest}")
                yield response
                return
            finally:
                await response.aclose()
        raise Unauthenticated(f"{self.endpoint.registry} keeps refusing blob {digest}")
