"""A real upstream OCI registry for pull/push tests: CNCF distribution 2.8 (Debian `docker-registry`)
started on 127.0.0.1:<free port> with a temporary config and storage, optionally behind htpasswd
Basic auth, and killed by PID in teardown. Plus in-process Registry services (grpc.aio) to drive."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelrunner.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.common.clock import SystemClock
from services.common.grpc_client import open_channel
from services.registry.app import RegistryApp, build_registry
from services.registry.config import RegistrySettings, RemoteSettings
from tests.support.processes import free_port, stop_process, wait_for
from tests.unit.registry.conftest import smollm2_path

REGISTRY_BINARY = "/usr/bin/docker-registry"
USER, PASSWORD = "alice", "s3cret"


@dataclass
class DockerRegistry:
    """One docker-registry process; `restart()` keeps its port and storage."""

    root: Path
    port: int
    htpasswd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log_handle: object = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def blob_data(self, digest: str) -> Path:
        hex_part = digest.removeprefix("sha256:")
        return self.storage / f"docker/registry/v2/blobs/sha256/{hex_part[:2]}/{hex_part}/data"

    def _config(self) -> str:
        auth = (
            f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {self.htpasswd}\n"
            if self.htpasswd
            else ""
        )
        return (
            "version: 0.1\n"
            "log:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {self.host}\n  secret: test-secret\n"
            f"{auth}"
        )

    def start(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(self._config())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._answers, timeout=20, what=f"docker-registry on {self.host}")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"docker-registry exited with {self.process.returncode}: "
                f"{self.log_path.read_text()[-2000:]}"
            )
        try:
            response = httpx.get(f"http://{self.host}/v2/", timeout=1.0)
        except httpx.TransportError:
            return False
        return response.status_code in (200, 401)

    def kill(self) -> None:
        """SIGKILL, as a crash: open connections are cut mid-transfer."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def blob_gets(self, digest: str) -> int:
        """Blob GET requests served, from the access log."""
        return sum(
            1
            for line in self.log_path.read_text(errors="replace").splitlines()
            if "GET /v2/" in line and f"/blobs/{digest}" in line and 'HTTP/1.1" 20' in line
        )


def _require_binaries() -> None:
    if not Path(REGISTRY_BINARY).is_file():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")


@contextlib.contextmanager
def running_registry(root: Path, *, basic_auth: bool = False) -> Iterator[DockerRegistry]:
    _require_binaries()
    root.mkdir(parents=True, exist_ok=True)
    htpasswd: Path | None = None
    if basic_auth:
        tool = shutil.which("htpasswd")
        if tool is None:
            pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
        line = subprocess.run(
            [tool, "-Bbn", USER, PASSWORD], check=True, capture_output=True, timeout=30
        ).stdout
        htpasswd = root / "htpasswd"
        htpasswd.write_bytes(line.strip() + b"\n")
    registry = DockerRegistry(root=root, port=free_port(), htpasswd=htpasswd)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    """Anonymous registry shared by a module's tests."""
    with running_registry(tmp_path_factory.mktemp("oci-registry")) as registry:
        yield registry


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    """Registry behind htpasswd Basic auth (alice / s3cret)."""
    with running_registry(tmp_path_factory.mktemp("basic-registry"), basic_auth=True) as registry:
        yield registry


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    """A registry of the test's own, for tests that tamper with it or kill it."""
    with running_registry(tmp_path / "oci-registry") as registry:
        yield registry


def remote_settings(**overrides: object) -> RemoteSettings:
    """Short timeouts and quick, few retries: failure tests finish in seconds."""
    values: dict[str, object] = {
        "connect_timeout": 2.0,
        "read_timeout": 10.0,
        "attempts": 2,
        "retry_initial_wait": 0.05,
        "retry_max_wait": 0.2,
        **overrides,
    }
    return RemoteSettings(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Service:
    app: RegistryApp
    stub: registry_pb2_grpc.RegistryAsyncStub
    root: Path


@contextlib.asynccontextmanager
async def registry_service(
    root: Path, remote: RemoteSettings | None = None
) -> AsyncIterator[Service]:
    settings = RegistrySettings(
        models_path=root,
        listen_address="127.0.0.1:0",
        remote=remote or remote_settings(docker_config_path=root / "no-docker-config.json"),
    )
    app = await build_registry(settings, clock=SystemClock())
    port = await app.server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        yield Service(app=app, stub=registry_pb2_grpc.RegistryStub(channel), root=root)
    finally:
        await channel.close()
        await app.server.stop(grace=1.0)
        await app.close()


async def collect(call: object) -> list[registry_pb2.TransferProgress]:
    return [message async for message in call]  # type: ignore[attr-defined]


def success_model(messages: list[registry_pb2.TransferProgress]) -> common_pb2.Model:
    assert messages, "no progress messages"
    last = messages[-1]
    assert last.type == registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS, last
    return last.model


async def push_model(
    service: Service, reference: str, target: str, **credentials: str
) -> list[registry_pb2.TransferProgress]:
    request = registry_pb2.PushRequest(
        reference=reference,
        target=target,
        credentials=registry_pb2.RegistryCredentials(**credentials),
    )
    return await collect(service.stub.Push(request, timeout=120))


async def pull_model(
    service: Service, reference: str, **credentials: str
) -> list[registry_pb2.TransferProgress]:
    request = registry_pb2.PullRequest(
        reference=reference, credentials=registry_pb2.RegistryCredentials(**credentials)
    )
    return await collect(service.stub.Pull(request, timeout=120))


@pytest.fixture(scope="package")
async def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the real SmolLM2, packaged once for all registry integration tests."""
    root = tmp_path_factory.mktemp("source") / "models"
    async with registry_service(root) as service:
        await service.stub.Package(
            registry_pb2.PackageRequest(gguf_path=str(smollm2_path()), tag="ai/smollm2:v1")
        )
    return root


@pytest.fixture
async def source(source_root: Path) -> AsyncIterator[Service]:
    """A registry service (per test: its gRPC tasks must not outlive the test) on that store."""
    async with registry_service(source_root) as service:
        yield service
