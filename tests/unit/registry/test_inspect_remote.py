"""InspectRemote: a model described from its upstream manifest and config, nothing pulled.

The upstream is an httpx transport serving a model packaged into a real store; the inspector, the
session, the checks and the servicer are the real ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.clock import SystemClock
from services.common.grpc_client import open_channel
from services.registry.app import build_registry
from services.registry.config import RegistrySettings, RemoteSettings
from services.registry.credentials import Credentials
from services.registry.errors import (
    InvalidArgument,
    RegistryUnavailable,
    RemoteDigestMismatch,
    RemoteNotFound,
    RemoteProtocolError,
    Unauthenticated,
    UnsupportedMediaType,
)
from services.registry.model_store import Model, ModelStore
from services.registry.packaging import Packager, PackageSpec
from services.registry.remote_inspect import RemoteInspector
from services.registry.server import model_to_proto
from services.registry.store.manifests import MEDIA_TYPE_MANIFEST

from .conftest import TinyFactory, stored_files

Answer = Callable[[httpx.Request], httpx.Response | None]


@dataclass
class Upstream:
    """Serves `ai/tiny:v1` (and its digest) from a store on `hosts`; records every request.

    `override` may answer a request first (return None to fall through): a test's fault.
    """

    store: ModelStore
    model: Model
    hosts: set[str] = field(default_factory=lambda: {"registry.lan"})
    requests: list[httpx.Request] = field(default_factory=list)
    override: Answer | None = None

    @property
    def paths(self) -> list[str]:
        return [f"{request.url.host}{request.url.path}" for request in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.override is not None:
            answer = self.override(request)
            if answer is not None:
                return answer
        host, path = request.url.host, request.url.path
        if host.startswith("down"):
            raise httpx.ConnectError("connection refused", request=request)
        unknown = httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        if host not in self.hosts or not path.startswith("/v2/ai/tiny/"):
            return unknown
        kind, _, ref = path.removeprefix("/v2/ai/tiny/").partition("/")
        if kind == "manifests" and ref in ("v1", self.model.id):
            data = self.store.blobs.path(self.model.id).read_bytes()
            return httpx.Response(
                200,
                content=data,
                headers={
                    "Content-Type": MEDIA_TYPE_MANIFEST,
                    "Docker-Content-Digest": self.model.id,
                },
            )
        if kind == "blobs":
            path_of = self.store.blobs.path(ref)
            if path_of.is_file():
                return httpx.Response(200, content=path_of.read_bytes())
        return unknown


def settings(tmp_path: Path, **overrides: object) -> RemoteSettings:
    values: dict[str, object] = {
        "default_registry": "registry.lan",
        "insecure_all": True,
        "attempts": 2,
        "retry_initial_wait": 0.0,
        "retry_max_wait": 0.0,
        "docker_config_path": tmp_path / "no-docker-config.json",
        **overrides,
    }
    return RemoteSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def upstream(store: ModelStore, packager: Packager, tiny_gguf: TinyFactory) -> Upstream:
    model = await packager.package(
        PackageSpec(gguf_path=str(tiny_gguf(context_length=4096)), tag="ai/tiny:v1")
    )
    return Upstream(store, model)


async def inspect(
    upstream: Upstream,
    remote: RemoteSettings,
    reference: str = "ai/tiny:v1",
    credentials: Credentials | None = None,
    *,
    max_metadata_bytes: int = 1 << 20,
) -> Model:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        inspector = RemoteInspector(http, remote, max_metadata_bytes=max_metadata_bytes)
        return await inspector.inspect(reference, credentials or Credentials())


def _config_path(upstream: Upstream) -> str:
    return f"registry.lan/v2/ai/tiny/blobs/{upstream.model.config_descriptor.digest}"


async def test_describes_the_model_as_a_pull_would_store_it_from_manifest_and_config_only(
    upstream: Upstream, tmp_path: Path
) -> None:
    model = await inspect(upstream, settings(tmp_path))

    local = upstream.model
    assert model == Model(
        id=local.id,
        tags=(),
        created=local.created,
        config=local.config,
        config_descriptor=local.config_descriptor,
        layers=local.layers,
    )
    assert model.config.context_size == 4096
    assert model.created > 0
    # The manifest and the small config blob; never a layer.
    assert upstream.paths == ["registry.lan/v2/ai/tiny/manifests/v1", _config_path(upstream)]


async def test_a_digest_reference_names_the_same_model(upstream: Upstream, tmp_path: Path) -> None:
    model = await inspect(upstream, settings(tmp_path), f"ai/tiny@{upstream.model.id}")
    assert model.id == upstream.model.id
    assert upstream.paths[0] == f"registry.lan/v2/ai/tiny/manifests/{upstream.model.id}"


async def test_the_proto_has_the_local_inspect_shape_without_tags(
    upstream: Upstream, tmp_path: Path
) -> None:
    remote = model_to_proto(await inspect(upstream, settings(tmp_path)))
    local = model_to_proto(upstream.model)
    assert list(local.tags) == ["ai/tiny:v1"]
    local.ClearField("tags")
    assert remote == local


async def test_mirrors_are_tried_first_like_a_pull(upstream: Upstream, tmp_path: Path) -> None:
    remote = settings(tmp_path, registry_mirrors=("down.lan", "missing.lan"))
    model = await inspect(upstream, remote)
    assert model.id == upstream.model.id
    hosts = list(dict.fromkeys(request.url.host for request in upstream.requests))
    assert hosts == ["down.lan", "missing.lan", "registry.lan"]


async def test_unknown_tag_repository_and_host(upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFound, match="MANIFEST_UNKNOWN"):
        await inspect(upstream, settings(tmp_path), "ai/tiny:v2")
    with pytest.raises(RemoteNotFound):
        await inspect(upstream, settings(tmp_path), "team/other:v1")
    with pytest.raises(RegistryUnavailable, match=r"down\.lan is unreachable"):
        await inspect(upstream, settings(tmp_path), "down.lan/ai/tiny:v1")


@pytest.mark.parametrize("reference", ["", "Team/Model", "ai/tiny:bad tag", "ai/x@sha256:12"])
async def test_bad_reference_is_refused_before_any_request(
    upstream: Upstream, tmp_path: Path, reference: str
) -> None:
    with pytest.raises(InvalidArgument):
        await inspect(upstream, settings(tmp_path), reference)
    assert upstream.requests == []


def _manifest_answer(upstream: Upstream, edit: Callable[[dict[str, object]], None]) -> Answer:
    """Serve the model's manifest after `edit`, as a manifest of its own (its own digest)."""

    def answer(request: httpx.Request) -> httpx.Response | None:
        if "/manifests/" not in request.url.path:
            return None
        body = json.loads(upstream.store.blobs.path(upstream.model.id).read_bytes())
        edit(body)
        return httpx.Response(200, content=json.dumps(body).encode())

    return answer


async def test_unsupported_config_media_type_is_named(upstream: Upstream, tmp_path: Path) -> None:
    def image_config(body: dict[str, object]) -> None:
        body["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json"  # type: ignore[index]

    upstream.override = _manifest_answer(upstream, image_config)
    with pytest.raises(UnsupportedMediaType, match=r"application/vnd\.oci\.image\.config\.v1"):
        await inspect(upstream, settings(tmp_path))
    assert all("/blobs/" not in path for path in upstream.paths)


async def test_a_config_too_large_to_read_whole_is_refused_unread(
    upstream: Upstream, tmp_path: Path
) -> None:
    def huge_config(body: dict[str, object]) -> None:
        body["config"]["size"] = 2 << 20  # type: ignore[index]

    upstream.override = _manifest_answer(upstream, huge_config)
    with pytest.raises(RemoteProtocolError, match="config blob is larger than 1048576"):
        await inspect(upstream, settings(tmp_path), max_metadata_bytes=1 << 20)
    assert upstream.paths == ["registry.lan/v2/ai/tiny/manifests/v1"]


@pytest.mark.parametrize("fault", ["other bytes", "more bytes"])
async def test_config_bytes_that_do_not_match_the_digest_are_refused(
    upstream: Upstream, tmp_path: Path, fault: str
) -> None:
    config = upstream.store.blobs.path(upstream.model.config_descriptor.digest).read_bytes()
    served = config.replace(b"llama", b"llamb") if fault == "other bytes" else config + b" "

    def tampered(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path:
            return httpx.Response(200, content=served)
        return None

    upstream.override = tampered
    with pytest.raises(RemoteDigestMismatch):
        await inspect(upstream, settings(tmp_path))
    # Not a transient failure: asked once.
    assert upstream.paths.count(_config_path(upstream)) == 1


async def test_invalid_config_json_is_a_protocol_error(upstream: Upstream, tmp_path: Path) -> None:
    bogus = b"[not a config"
    digest = "sha256:" + hashlib.sha256(bogus).hexdigest()

    def point_at_bogus(body: dict[str, object]) -> None:
        body["config"]["digest"] = digest  # type: ignore[index]
        body["config"]["size"] = len(bogus)  # type: ignore[index]

    manifests = _manifest_answer(upstream, point_at_bogus)

    def answer(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith(digest):
            return httpx.Response(200, content=bogus)
        return manifests(request)

    upstream.override = answer
    with pytest.raises(RemoteProtocolError, match="invalid model config"):
        await inspect(upstream, settings(tmp_path))


async def test_transient_config_failures_are_retried(upstream: Upstream, tmp_path: Path) -> None:
    failures = [httpx.Response(503), httpx.Response(429)]

    def flaky(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path and failures:
            return failures.pop(0)
        return None

    upstream.override = flaky
    model = await inspect(upstream, settings(tmp_path, attempts=3))
    assert model.id == upstream.model.id
    assert upstream.paths.count(_config_path(upstream)) == 3

    failures[:] = [httpx.Response(503)] * 3
    with pytest.raises(RegistryUnavailable, match="503"):
        await inspect(upstream, settings(tmp_path, attempts=2))


async def test_the_bearer_token_is_sent_for_manifest_and_config(
    upstream: Upstream, tmp_path: Path
) -> None:
    def guarded(request: httpx.Request) -> httpx.Response | None:
        if request.headers.get("Authorization") == "Bearer right":
            return None
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": 'Bearer realm="https://auth.lan/token"'},
            json={"errors": [{"code": "UNAUTHORIZED"}]},
        )

    upstream.override = guarded
    model = await inspect(upstream, settings(tmp_path), credentials=Credentials("right"))
    assert model.id == upstream.model.id
    assert [r.headers["Authorization"] for r in upstream.requests] == ["Bearer right"] * 2
    with pytest.raises(Unauthenticated, match="rejected the bearer token"):
        await inspect(upstream, settings(tmp_path), credentials=Credentials("wrong"))


async def test_docker_config_credentials_are_used_without_request_credentials(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = tmp_path / "docker.json"
    config.write_text(json.dumps({"auths": {"registry.lan": {"username": "u", "password": "p"}}}))

    def basic_only(request: httpx.Request) -> httpx.Response | None:
        if request.headers.get("Authorization", "").startswith("Basic "):
            return None
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    upstream.override = basic_only
    model = await inspect(upstream, settings(tmp_path, docker_config_path=config))
    assert model.id == upstream.model.id


# The servicer: status codes, and nothing written to the store.


@pytest.fixture
async def service(
    tmp_path: Path,
) -> AsyncIterator[tuple[registry_pb2_grpc.RegistryAsyncStub, Path]]:
    root = tmp_path / "served"
    app = await build_registry(
        RegistrySettings(
            models_path=root,
            listen_address="127.0.0.1:0",
            remote=settings(tmp_path, attempts=1, connect_timeout=2.0),
        ),
        clock=SystemClock(),
    )
    port = await app.server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        yield registry_pb2_grpc.RegistryStub(channel), root
    finally:
        await channel.close()
        await app.server.stop(grace=1.0)
        await app.close()


@pytest.mark.parametrize(
    ("reference", "code"),
    [
        ("Team/../x", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        # Nothing listens on port 1: refused at once.
        ("127.0.0.1:1/team/x:v1", grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_servicer_maps_errors_and_writes_nothing(
    service: tuple[registry_pb2_grpc.RegistryAsyncStub, Path],
    reference: str,
    code: grpc.StatusCode,
) -> None:
    stub, root = service
    before = stored_files(root)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.InspectRemote(registry_pb2.InspectRemoteRequest(reference=reference), timeout=20)
    assert caught.value.code() == code, caught.value.details()
    assert caught.value.details()
    assert stored_files(root) == before
    listed = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=5)
    assert list(listed.models) == []
