"""The closed internal plane: settings, the token check and mutual TLS on real grpc.aio servers."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelrunner.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.common.env import SettingError
from services.common.grpc_client import open_channel
from services.common.grpc_server import GrpcServer
from services.common.internal_security import InternalSecurity, TokenServerInterceptor

SERVICE = "modelrunner.v1.Registry"
TOKEN = "s3cret-internal-token"


@dataclass(frozen=True)
class Pki:
    """A CA, a certificate for `localhost`/127.0.0.1 it signed (server and client use), and a
    certificate from a second, untrusted CA."""

    ca: Path
    cert: Path
    key: Path
    rogue_cert: Path
    rogue_key: Path

    def env(self) -> dict[str, str]:
        return {
            "MODEL_RUNNER_TLS_CA": str(self.ca),
            "MODEL_RUNNER_TLS_CERT": str(self.cert),
            "MODEL_RUNNER_TLS_KEY": str(self.key),
        }

    def security(self, token: str = "") -> InternalSecurity:
        return InternalSecurity(
            ca_path=self.ca, cert_path=self.cert, key_path=self.key, token=token
        )


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _authority(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip


def _leaf(directory: Path, name: str, authority: str) -> None:
    (directory / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{authority}.pem",
        "-CAkey", f"{authority}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
        "-extfile", "ext.cnf",
        cwd=directory,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    """Real certificates made with the openssl CLI (the `cryptography` package is not installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    _authority(directory, "ca")
    _leaf(directory, "service", "ca")
    _authority(directory, "rogue-ca")
    _leaf(directory, "rogue", "rogue-ca")
    return Pki(
        ca=directory / "ca.pem",
        cert=directory / "service.pem",
        key=directory / "service.key",
        rogue_cert=directory / "rogue.pem",
        rogue_key=directory / "rogue.key",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class _Registry(registry_pb2_grpc.RegistryServicer):
    """Unary, server-streaming and client-streaming methods (reflection is the bidirectional
    one): the token must travel with, and be checked on, every call shape."""

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: object
    ) -> registry_pb2.ListModelsResponse:
        return registry_pb2.ListModelsResponse()

    async def FetchBlob(
        self, request: registry_pb2.FetchBlobRequest, context: object
    ) -> AsyncIterator[registry_pb2.BlobChunk]:
        yield registry_pb2.BlobChunk(data=b"blob")

    async def PackageUpload(
        self, request_iterator: AsyncIterator[registry_pb2.PackageUploadRequest], context: object
    ) -> registry_pb2.PackageResponse:
        tags = [message.header.tag async for message in request_iterator]
        return registry_pb2.PackageResponse(model=common_pb2.Model(tags=tags))


async def _serve(security: InternalSecurity) -> tuple[GrpcServer, str]:
    server = GrpcServer("127.0.0.1:0", [SERVICE], security=security)
    registry_pb2_grpc.add_RegistryServicer_to_server(_Registry(), server.server)
    port = await server.start()
    return server, f"127.0.0.1:{port}"


async def _calls(channel: grpc.aio.Channel) -> tuple[int, bytes, list[str], int]:
    """One call of each shape; raises on the first refused one."""
    stub = registry_pb2_grpc.RegistryStub(channel)
    listed = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=5)
    chunks = [
        chunk.data async for chunk in stub.FetchBlob(registry_pb2.FetchBlobRequest(), timeout=5)
    ]
    header = registry_pb2.PackageUploadHeader(tag="ai/x")
    uploaded = await stub.PackageUpload(
        iter([registry_pb2.PackageUploadRequest(header=header)]), timeout=5
    )
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    services = [len(reply.list_services_response.service) async for reply in reflection]
    return len(listed.models), b"".join(chunks), list(uploaded.model.tags), len(services)


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
    )
    return int(reply.status)


# Settings -------------------------------------------------------------------------------------


def test_no_variables_mean_the_open_plane() -> None:
    security = InternalSecurity.from_env({})
    assert not security.tls
    assert security.server_credentials() is None
    assert security.channel_credentials() is None
    assert security.server_interceptors() == ()
    assert security.client_interceptors() == ()


def test_tls_needs_all_three_paths(pki: Pki) -> None:
    env = pki.env()
    del env["MODEL_RUNNER_TLS_KEY"]
    with pytest.raises(SettingError, match="MODEL_RUNNER_TLS_KEY"):
        InternalSecurity.from_env(env)


def test_unreadable_certificate_is_refused_at_start(pki: Pki, tmp_path: Path) -> None:
    env = {**pki.env(), "MODEL_RUNNER_TLS_CA": str(tmp_path / "absent.pem")}
    with pytest.raises(SettingError, match=r"absent\.pem"):
        InternalSecurity.from_env(env)


def test_token_from_file_and_never_in_repr(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    security = InternalSecurity.from_env({"MODEL_RUNNER_INTERNAL_TOKEN_FILE": str(path)})
    assert security.token == TOKEN
    assert TOKEN not in repr(security)
    assert TOKEN not in repr(security.server_interceptors())
    assert TOKEN not in repr(security.client_interceptors())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MODEL_RUNNER_INTERNAL_TOKEN": "a", "MODEL_RUNNER_INTERNAL_TOKEN_FILE": "/x"},
            "not both",
        ),
        ({"MODEL_RUNNER_INTERNAL_TOKEN": "has space"}, "printable ASCII"),
        ({"MODEL_RUNNER_INTERNAL_TOKEN_FILE": "/nonexistent/token"}, "cannot read"),
    ],
)
def test_bad_token_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError, match=message):
        InternalSecurity.from_env(env)


def test_empty_token_interceptor_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenServerInterceptor("")


# Token ----------------------------------------------------------------------------------------


async def test_token_guards_every_call_but_health() -> None:
    server, address = await _serve(InternalSecurity(token=TOKEN))
    try:
        async with open_channel(address, security=InternalSecurity(token=TOKEN)) as good:
            assert await _calls(good) == (0, b"blob", ["ai/x"], 1)
        for wrong in (InternalSecurity(), InternalSecurity(token=TOKEN + "x")):
            async with open_channel(address, security=wrong) as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as unary:
                    await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=5)
                assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert TOKEN not in (unary.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as stream:
                    async for _ in stub.FetchBlob(registry_pb2.FetchBlobRequest(), timeout=5):
                        pytest.fail("a blob chunk reached a caller without the token")
                assert stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as upload:
                    await stub.PackageUpload(iter([registry_pb2.PackageUploadRequest()]), timeout=5)
                assert upload.value.code() == grpc.StatusCode.UNAUTHENTICATED
                reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as both_ways:
                    async for _ in reflection.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                    ):
                        pytest.fail("reflection answered a caller without the token")
                assert both_ways.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(grace=0)


# Mutual TLS -----------------------------------------------------------------------------------


async def test_mutual_tls_with_token(pki: Pki) -> None:
    server, address = await _serve(pki.security(TOKEN))
    try:
        async with open_channel(address, security=pki.security(TOKEN)) as good:
            assert await _calls(good) == (0, b"blob", ["ai/x"], 1)
        # The right certificate is not enough without the token.
        async with open_channel(address, security=pki.security()) as no_token:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await _calls(no_token)
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await _health(no_token) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(grace=0)


async def test_mutual_tls_refuses_plain_and_foreign_clients(pki: Pki) -> None:
    server, address = await _serve(pki.security())
    rogue = InternalSecurity(ca_path=pki.ca, cert_path=pki.rogue_cert, key_path=pki.rogue_key)
    # A server certificate from an authority we do not trust must be refused by the client too.
    untrusting = InternalSecurity(ca_path=pki.rogue_cert, cert_path=pki.cert, key_path=pki.key)
    try:
        for security in (InternalSecurity(token=TOKEN), rogue, untrusting):
            async with open_channel(address, security=security) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await _health(channel)
                assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(grace=0)


async def test_server_name_override_is_what_the_certificate_is_checked_against(pki: Pki) -> None:
    server, address = await _serve(pki.security())
    try:
        async with open_channel(address, security=pki.security()) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        # The certificate names localhost and 127.0.0.1, not the overriding name.
        renamed = InternalSecurity(
            ca_path=pki.ca, cert_path=pki.cert, key_path=pki.key, server_name="other.example"
        )
        async with open_channel(address, security=renamed) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await _health(channel)
        localhost = InternalSecurity(
            ca_path=pki.ca, cert_path=pki.cert, key_path=pki.key, server_name="localhost"
        )
        async with open_channel(address, security=localhost) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(grace=0)
