"""Pure parts of pull/push: challenges, endpoints, credentials, throttling, media-type checks."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from services.common.clock import SystemClock
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
from services.registry.model_store import ModelStore
from services.registry.oci import (
    RemoteManifest,
    RepositorySession,
    TransientStatus,
    parse_challenge,
    pull_endpoints,
    raise_for_status,
    resolve_endpoint,
)
from services.registry.packaging import Packager, PackageSpec
from services.registry.progress import Throttle, format_bytes
from services.registry.pull import (
    Puller,
    check_manifest,
    open_session,
    parse_remote_reference,
)
from services.registry.store.manifests import (
    MEDIA_TYPE_CNCF_CONFIG,
    MEDIA_TYPE_CONFIG_V01,
    MEDIA_TYPE_CONFIG_V02,
    MEDIA_TYPE_MANIFEST,
)
from services.registry.transfer import BlobDownloader

from .conftest import TinyFactory, open_store
from .upstream import port_of, refused_port, serve

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


def test_default_registry_and_mirrors_from_env() -> None:
    settings = RemoteSettings.from_env(
        {
            "DEFAULT_REGISTRY": "Registry.LAN:5000",
            "MODEL_RUNNER_REGISTRY_MIRRORS": " mirror.lan , 127.0.0.1:5001/,docker.io",
        }
    )
    assert settings.default_registry == "registry.lan:5000"
    assert settings.registry_mirrors == ("mirror.lan", "127.0.0.1:5001", DEFAULT_REGISTRY)
    assert RemoteSettings.from_env({}).default_registry == DEFAULT_REGISTRY
    assert RemoteSettings.from_env({"DEFAULT_REGISTRY": "docker.io"}).default_registry == (
        DEFAULT_REGISTRY
    )
    for name, value in (
        ("DEFAULT_REGISTRY", "https://registry.lan"),
        ("DEFAULT_REGISTRY", "nodot"),
        ("MODEL_RUNNER_REGISTRY_MIRRORS", "mirror.lan/path"),
        ("MODEL_RUNNER_REGISTRY_MIRRORS", "bad_host.lan"),
    ):
        with pytest.raises(SettingError, match=name):
            RemoteSettings.from_env({name: value})


def test_pull_endpoints_try_mirrors_in_order_then_the_upstream() -> None:
    settings = RemoteSettings(
        default_registry="registry.lan",
        registry_mirrors=("127.0.0.1:5001", "mirror.lan"),
    )
    hub = pull_endpoints(DEFAULT_REGISTRY, settings)
    assert [e.base_url for e in hub] == [
        "http://127.0.0.1:5001",
        "https://mirror.lan",
        "https://registry-1.docker.io",
    ]
    assert [e.registry for e in hub] == ["127.0.0.1:5001", "mirror.lan", DEFAULT_REGISTRY]
    default = pull_endpoints("registry.lan", settings)
    assert [e.base_url for e in default] == [
        "http://127.0.0.1:5001",
        "https://mirror.lan",
        "https://registry.lan",
    ]
    # Explicit other registries are never mirrored, and a mirror is not its own mirror.
    assert [e.registry for e in pull_endpoints("ghcr.io", settings)] == ["ghcr.io"]
    assert [e.registry for e in pull_endpoints("mirror.lan", settings)] == ["mirror.lan"]
    itself = RemoteSettings(default_registry="mirror.lan", registry_mirrors=("mirror.lan", "m.lan"))
    assert [e.registry for e in pull_endpoints("mirror.lan", itself)] == ["m.lan", "mirror.lan"]
    assert [e.registry for e in pull_endpoints(DEFAULT_REGISTRY, RemoteSettings())] == [
        DEFAULT_REGISTRY
    ]


def test_references_without_a_host_use_the_default_registry() -> None:
    reference = parse_remote_reference("ai/x:v1", "registry.lan")
    assert (reference.registry, reference.repository) == ("registry.lan", "ai/x")
    assert reference.local_name("registry.lan") == "ai/x:v1"
    hub = parse_remote_reference("ai/x:v1")
    assert hub.registry == DEFAULT_REGISTRY
    assert hub.local_name(DEFAULT_REGISTRY) == "ai/x:v1"
    # With another default, Docker Hub's model keeps its host: it is not the default's ai/x.
    assert hub.local_name("registry.lan") == "docker.io/ai/x:v1"
    other = parse_remote_reference("ghcr.io/ai/x:v1", "registry.lan")
    assert other.local_name("registry.lan") == "ghcr.io/ai/x:v1"


async def test_mirror_sessions_get_their_own_credentials_never_the_requests(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.json"
    mirror_auth = base64.b64encode(b"mirror-user:mirror-pw").decode()
    config.write_text(json.dumps({"auths": {"mirror.lan": {"auth": mirror_auth}}}))
    settings = RemoteSettings(docker_config_path=config, registry_mirrors=("mirror.lan",))
    reference = parse_remote_reference("ai/x:v1")
    given = Credentials(bearer_token="for-docker-hub")
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("Authorization", "")))
        if request.headers.get("Authorization"):
            return httpx.Response(200, content=b"{}")
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        mirror, upstream = pull_endpoints(reference.registry, settings)
        for endpoint in (mirror, upstream):
            session = await open_session(http, settings, reference, given, endpoint=endpoint)
            await session.get_manifest("v1", max_bytes=1024)
    basic = "Basic " + mirror_auth
    assert seen == [
        ("mirror.lan", ""),
        ("mirror.lan", basic),
        ("registry-1.docker.io", "Bearer for-docker-hub"),
    ]


class MirroredRegistry:
    """Serves one stored model from the `serving` hosts; `missing*` hosts answer 404, `broken*`
    ones 503, and `down*` ones refuse connections (no server at all)."""

    def __init__(self, source: ModelStore, manifest_digest: str, serving: set[str]) -> None:
        self.source = source
        self.manifest_digest = manifest_digest
        self.serving = serving
        self.names: dict[int, str] = {}
        self.hosts: list[str] = []
        self.blob_hosts: list[str] = []

    async def __call__(self, request: web.Request) -> web.Response:
        host = self.names[port_of(request)]
        self.hosts.append(host)
        if host.startswith("broken"):
            return web.Response(status=503)
        path = request.path
        if host not in self.serving or not path.startswith("/v2/ai/tiny/"):
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        if path.endswith("/manifests/v1"):
            data = self.source.blobs.path(self.manifest_digest).read_bytes()
            return web.Response(body=data, headers={"Content-Type": MEDIA_TYPE_MANIFEST})
        self.blob_hosts.append(host)
        digest = path.rpartition("/")[2]
        return web.Response(body=self.source.blobs.path(digest).read_bytes())

    @contextlib.asynccontextmanager
    async def hosts_named(self, *names: str) -> AsyncIterator[dict[str, str]]:
        """`host:port` on loopback for each name: a server port, or a refusing one for `down*`."""
        up = [name for name in names if not name.startswith("down")]
        down = [name for name in names if name.startswith("down")]
        with contextlib.ExitStack() as refusing:
            addresses = {
                name: f"127.0.0.1:{refusing.enter_context(refused_port())}" for name in down
            }
            async with serve(self, ports=len(up)) as ports:
                self.names = dict(zip(ports, up, strict=True))
                addresses.update({name: f"127.0.0.1:{port}" for port, name in self.names.items()})
                yield addresses


@pytest.mark.parametrize(
    ("mirrors", "serving", "expected"),
    [
        (
            ("down.lan", "missing.lan", "broken.lan"),
            {"registry.lan"},
            ["down.lan", "missing.lan", "broken.lan", "registry.lan"],
        ),
        (("missing.lan", "good.lan", "down.lan"), {"good.lan"}, ["missing.lan", "good.lan"]),
        ((), {"registry.lan"}, ["registry.lan"]),
    ],
)
async def test_pull_falls_back_through_mirrors_in_order(
    store: ModelStore,
    packager: Packager,
    tiny_gguf: TinyFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mirrors: tuple[str, ...],
    serving: set[str],
    expected: list[str],
) -> None:
    model = await packager.package(PackageSpec(gguf_path=str(tiny_gguf()), tag="ai/tiny:v1"))
    upstream = MirroredRegistry(store, model.id, serving)
    async with (
        upstream.hosts_named(*mirrors, "registry.lan") as address,
        httpx.AsyncClient() as http,
    ):
        settings = RemoteSettings(
            default_registry=address["registry.lan"],
            registry_mirrors=tuple(address[name] for name in mirrors),
            attempts=2,
            retry_initial_wait=0.0,
            retry_max_wait=0.0,
            docker_config_path=tmp_path / "none.json",
        )
        target = await open_store(tmp_path / "target", default_registry=settings.default_registry)
        puller = Puller(
            target,
            BlobDownloader(target.blobs, settings),
            http,
            settings,
            clock=SystemClock(),
            max_metadata_bytes=1 << 20,
        )
        events = [event async for event in puller.pull("ai/tiny:v1", Credentials())]
    assert events[-1].model is not None
    assert events[-1].model.id == model.id
    assert events[-1].model.tags == ("ai/tiny:v1",)
    answered = [name for name in expected if not name.startswith("down")]
    assert list(dict.fromkeys(upstream.hosts)) == answered
    skipped = [
        name
        for name in mirrors
        for record in caplog.records
        if record.getMessage().startswith(f"mirror {address[name]} failed")
    ]
    assert skipped == expected[:-1]
    # Transient failures are retried on the mirror before moving on; a 404 is not.
    assert upstream.hosts.count("missing.lan") == (1 if "missing.lan" in expected else 0)
    assert upstream.hosts.count("broken.lan") == (2 if "broken.lan" in expected else 0)
    assert set(upstream.blob_hosts) == {expected[-1]}


async def test_a_mirror_is_never_used_for_other_registries_and_the_last_error_is_raised(
    store: ModelStore, packager: Packager, tiny_gguf: TinyFactory, tmp_path: Path
) -> None:
    model = await packager.package(PackageSpec(gguf_path=str(tiny_gguf()), tag="ai/tiny:v1"))
    upstream = MirroredRegistry(store, model.id, {"good.lan"})
    target = await open_store(tmp_path / "target")
    async with (
        upstream.hosts_named("good.lan", "missing.lan") as address,
        httpx.AsyncClient() as http,
    ):
        settings = RemoteSettings(
            registry_mirrors=(address["good.lan"],),
            attempts=1,
            docker_config_path=tmp_path / "none.json",
        )
        puller = Puller(
            target,
            BlobDownloader(target.blobs, settings),
            http,
            settings,
            clock=SystemClock(),
            max_metadata_bytes=1 << 20,
        )
        with pytest.raises(RemoteNotFound):
            missing = f"{address['missing.lan']}/ai/tiny:v1"
            _ = [event async for event in puller.pull(missing, Credentials())]
        assert upstream.hosts == ["missing.lan"]
        # Docker Hub's reference: the mirror serves it, the upstream is never asked.
        events = [event async for event in puller.pull("ai/tiny:v1", Credentials())]
    assert events[-1].model is not None
    assert events[-1].model.tags == ("ai/tiny:v1",)
    assert set(upstream.hosts) == {"missing.lan", "good.lan"}
