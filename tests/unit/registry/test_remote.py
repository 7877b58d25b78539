"""Pure parts of pull/push: challenges, endpoints, credentials, throttling, media-type checks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from services.common.env import SettingError
from services.common.reference import DEFAULT_REGISTRY
from services.registry.config import RegistrySettings, RemoteSettings, is_loopback
from services.registry.credentials import Credentials, docker_config_credentials
from services.registry.errors import (
    InvalidArgument,
    RemoteNotFound,
    RemoteProtocolError,
    Unauthenticated,
    UnsupportedMediaType,
)
from services.registry.oci import (
    RemoteManifest,
    RepositorySession,
    TransientStatus,
    parse_challenge,
    raise_for_status,
    resolve_endpoint,
)
from services.registry.progress import Throttle, format_bytes
from services.registry.pull import check_manifest
from services.registry.store.manifests import (
    MEDIA_TYPE_CNCF_CONFIG,
    MEDIA_TYPE_CONFIG_V01,
    MEDIA_TYPE_CONFIG_V02,
    MEDIA_TYPE_MANIFEST,
)

DIGEST = "sha256:" + "a" * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("header", "scheme", "realm", "service", "scope"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:ai/smollm2:pull"',
            "bearer",
            "https://auth.docker.io/token",
            "registry.docker.io",
            "repository:ai/smollm2:pull",
        ),
        ('Basic realm="basic-realm"', "basic", "basic-realm", "", ""),
        ('bearer realm="http://127.0.0.1:9/t"', "bearer", "http://127.0.0.1:9/t", "", ""),
    ],
)
def test_parse_challenge(header: str, scheme: str, realm: str, service: str, scope: str) -> None:
    challenge = parse_challenge(header)
    assert (challenge.scheme, challenge.realm, challenge.service, challenge.scope) == (
        scheme,
        realm,
        service,
        scope,
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("registry.example.com:5000", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_endpoint_scheme_and_docker_hub_api_host() -> None:
    settings = RemoteSettings(insecure_registries=("registry.lan:5000",))
    hub = resolve_endpoint(DEFAULT_REGISTRY, settings)
    assert (hub.scheme, hub.api_host) == ("https", "registry-1.docker.io")
    assert resolve_endpoint("127.0.0.1:5000", settings).base_url == "http://127.0.0.1:5000"
    assert resolve_endpoint("registry.lan:5000", settings).scheme == "http"
    assert resolve_endpoint("ghcr.io", settings).scheme == "https"
    assert resolve_endpoint("ghcr.io", RemoteSettings(insecure_all=True)).scheme == "http"


def test_remote_settings_from_env() -> None:
    settings = RegistrySettings.from_env(
        {
            "INSECURE_REGISTRY": "Registry.LAN:5000, other:80",
            "REGISTRY_PULL_CONCURRENCY": "8",
            "REGISTRY_REMOTE_READ_TIMEOUT": "2m",
            "DOCKER_CONFIG": "/etc/dock",
        }
    ).remote
    assert settings.insecure_registries == ("registry.lan:5000", "other:80")
    assert not settings.insecure_all
    assert settings.pull_concurrency == 8
    assert settings.read_timeout == 120.0
    assert settings.docker_config_path == Path("/etc/dock/config.json")
    assert RemoteSettings.from_env({"INSECURE_REGISTRY": "true"}).insecure_all
    with pytest.raises(SettingError, match="REGISTRY_REMOTE_ATTEMPTS"):
        RemoteSettings.from_env({"REGISTRY_REMOTE_ATTEMPTS": "0"})


def _response(status: int, body: object = None) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("GET", "http://r/v2/"))


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, RemoteNotFound),
        (401, Unauthenticated),
        (403, Unauthenticated),
        (400, InvalidArgument),
        (429, TransientStatus),
        (503, TransientStatus),
        (418, RemoteProtocolError),
    ],
)
def test_raise_for_status_maps_registry_answers(status: int, error: type[Exception]) -> None:
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
    with pytest.raises(error, match="MANIFEST_UNKNOWN: manifest unknown"):
        raise_for_status(_response(status, body), "manifest ai/x:v1")
    raise_for_status(_response(200), "fine")


def test_throttle_like_dmr() -> None:
    clock = FakeClock()
    throttle = Throttle(clock, size=10_000_000, interval=0.1, min_bytes=1_000_000)
    assert throttle.should_emit(10)  # the first update always goes out
    assert not throttle.should_emit(20)
    assert not throttle.should_emit(20)
    assert throttle.should_emit(1_000_010)  # 1 MB more
    clock.now = 0.05
    assert not throttle.should_emit(1_000_020)
    clock.now = 0.2
    assert throttle.should_emit(1_000_030)  # 100 ms later
    assert throttle.should_emit(10_000_000)  # layer done
    assert not throttle.should_emit(10_000_000)


def test_format_bytes() -> None:
    assert format_bytes(12) == "12 B"
    assert format_bytes(12_340_000) == "12.34 MB"
    assert format_bytes(3_000_000_000) == "3.00 GB"


def _manifest(config_type: str, media_type: str | None = MEDIA_TYPE_MANIFEST) -> RemoteManifest:
    body: dict[str, object] = {
        "schemaVersion": 2,
        "config": {"mediaType": config_type, "digest": DIGEST, "size": 2},
        "layers": [],
    }
    if media_type is not None:
        body["mediaType"] = media_type
    data = json.dumps(body).encode()
    return RemoteManifest(data=data, media_type=MEDIA_TYPE_MANIFEST, digest=DIGEST)


@pytest.mark.parametrize(
    "config_type", [MEDIA_TYPE_CONFIG_V01, MEDIA_TYPE_CONFIG_V02, MEDIA_TYPE_CNCF_CONFIG]
)
def test_model_configs_are_accepted(config_type: str) -> None:
    assert check_manifest(_manifest(config_type)).config.media_type == config_type
    assert check_manifest(_manifest(config_type, media_type=None)).config.digest == DIGEST


@pytest.mark.parametrize(
    ("config_type", "media_type", "named"),
    [
        (
            "application/vnd.oci.image.config.v1+json",
            MEDIA_TYPE_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
        ),
        (
            "application/vnd.docker.ai.model.config.v0.3+json",
            MEDIA_TYPE_MANIFEST,
            "v0.3",
        ),
        (
            MEDIA_TYPE_CONFIG_V01,
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.index.v1+json",
        ),
        (
            MEDIA_TYPE_CONFIG_V01,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ],
)
def test_other_artifacts_are_refused_naming_the_type(
    config_type: str, media_type: str, named: str
) -> None:
    with pytest.raises(UnsupportedMediaType, match=named.replace("+", r"\+")):
        check_manifest(_manifest(config_type, media_type))


def test_docker_config_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    basic = base64.b64encode(b"alice:pa:ss").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": basic},
                    "registry.lan:5000": {"username": "bob", "password": "pw"},
                    "broken.example": {"auth": "!!!"},
                },
                "credsStore": "desktop",
            }
        )
    )
    assert docker_config_credentials(config, DEFAULT_REGISTRY) == Credentials(
        username="alice", password="pa:ss"
    )
    assert docker_config_credentials(config, "registry.lan:5000") == Credentials(
        username="bob", password="pw"
    )
    assert docker_config_credentials(config, "broken.example") is None
    assert docker_config_credentials(config, "ghcr.io") is None
    assert docker_config_credentials(tmp_path / "missing.json", "ghcr.io") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert docker_config_credentials(tmp_path / "bad.json", "ghcr.io") is None


class TokenRegistry:
    """A Docker-Hub-style registry and token endpoint, as an httpx transport."""

    def __init__(self, *, user: str = "alice", password: str = "pw") -> None:
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.token_requests: list[httpx.Request] = []
        self.seen_authorization: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            self.token_requests.append(request)
            if request.headers.get("Authorization") not in (None, self.basic):
                return httpx.Response(401, json={"details": "bad credentials"})
            return httpx.Response(200, json={"token": "T-" + request.url.params["scope"]})
        authorization = request.headers.get("Authorization", "")
        self.seen_authorization.append(authorization)
        if authorization in ("Bearer T-repository:ai/x:pull", "Bearer given"):
            return httpx.Response(200, content=b"{}", headers={"Content-Type": "application/json"})
        return httpx.Response(
            401,
            headers={
                "WWW-Authenticate": 'Bearer realm="https://auth.example/token",'
                'service="reg.example",scope="repository:ai/x:pull"'
            },
        )


async def _get_manifest(transport: TokenRegistry, credentials: Credentials) -> RemoteManifest:
    settings = RemoteSettings(attempts=1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(transport)) as http:
        session = RepositorySession(
            http, settings, resolve_endpoint("reg.example", settings), "ai/x", credentials
        )
        return await session.get_manifest("v1", max_bytes=1024)


async def test_bearer_challenge_gets_an_anonymous_token() -> None:
    registry = TokenRegistry()
    manifest = await _get_manifest(registry, Credentials())
    assert manifest.data == b"{}"
    (token_request,) = registry.token_requests
    assert token_request.url.params["service"] == "reg.example"
    assert "Authorization" not in token_request.headers
    assert registry.seen_authorization == ["", "Bearer T-repository:ai/x:pull"]


async def test_bearer_challenge_uses_basic_credentials_for_the_token() -> None:
    registry = TokenRegistry()
    await _get_manifest(registry, Credentials(username="alice", password="pw"))
    assert registry.token_requests[0].headers["Authorization"] == registry.basic
    with pytest.raises(Unauthenticated, match=r"token from https://auth\.example/token"):
        await _get_manifest(registry, Credentials(username="alice", password="wrong"))


async def test_request_bearer_token_is_sent_as_is() -> None:
    registry = TokenRegistry()
    await _get_manifest(registry, Credentials(bearer_token="given"))
    assert registry.seen_authorization == ["Bearer given"]
    assert registry.token_requests == []
    with pytest.raises(Unauthenticated, match="rejected the bearer token"):
        await _get_manifest(registry, Credentials(bearer_token="stale"))
