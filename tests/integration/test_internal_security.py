"""The closed internal plane with the real chain: registry, scheduler, worker and gateway as
processes with mutual TLS and a shared token, real llama-server and SmolLM2. A chat completion
works end to end; a stranger can neither register a worker nor fetch a blob; probes still work."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelrunner.v1 import registry_pb2, registry_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.internal_security import InternalSecurity
from services.stack.config import StackSettings
from services.stack.launcher import LocalStack
from tests.integration.conftest import BUNDLED_MODEL, StackFactory
from tests.support.processes import free_port, wait_until
from tests.unit.common.test_internal_security import Pki, make_pki

TOKEN = "integration-internal-token"
_READY = 90.0


@dataclass(frozen=True)
class Secured:
    stack: LocalStack
    security: InternalSecurity
    pki: Pki


async def _serving(address: str, security: InternalSecurity) -> bool:
    async with open_channel(address, security=security) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def _gateway_up(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as client:
        try:
            return (await client.get(url + "/")).status_code == 200
        except httpx.TransportError:
            return False


async def _wait_serving(name: str, address: str, security: InternalSecurity) -> None:
    await wait_until(
        lambda: _serving(address, security), what=f"{name} serving over TLS", timeout=_READY
    )


@pytest.fixture(scope="module")
async def secured(
    tmp_path_factory: pytest.TempPathFactory, gguf_path: Path, worker_cache: Path
) -> AsyncIterator[Secured]:
    """The stack's own processes and environment, started here rather than by
    `LocalStack.start`, whose readiness probe (services/common/health_client.py) dials without
    TLS."""
    root = tmp_path_factory.mktemp("secured")
    pki = make_pki(root / "pki")
    (root / "token").write_text(TOKEN + "\n")
    environ = {
        **os.environ,
        **pki.env(),
        "MODEL_RUNNER_INTERNAL_TOKEN_FILE": str(root / "token"),
        "MODEL_RUNNER_PORT": str(free_port()),
        "REGISTRY_ADDRESS": f"127.0.0.1:{free_port()}",
        "SCHEDULER_ADDRESS": f"127.0.0.1:{free_port()}",
        "WORKER_ADVERTISE_ADDRESS": f"127.0.0.1:{free_port()}",
        "MODELS_PATH": str(root / "models"),
        "WORKER_CACHE_PATH": str(worker_cache),
        "MODEL_RUNNER_LOG_DIR": str(root / "logs"),
        "SCHEDULER_STATE_PATH": str(root / "scheduler.json"),
        "REGISTRY_METRICS_ADDRESS": "0",
        "SCHEDULER_METRICS_ADDRESS": "0",
        "WORKER_METRICS_ADDRESS": "0",
    }
    settings = StackSettings.from_env(environ)
    assert settings.security.tls and settings.security.token == TOKEN
    stack = LocalStack(settings, environ)
    try:
        for service in (stack.registry, stack.scheduler, stack.worker):
            await service.start()
        for service, address in (
            (stack.registry, settings.registry_address),
            (stack.scheduler, settings.scheduler_address),
            (stack.worker, settings.worker_address),
        ):
            await _wait_serving(service.name, address, settings.security)
        await stack.ensure_model(gguf_path, BUNDLED_MODEL)
        await stack.gateway.start()
        await wait_until(
            lambda: _gateway_up(stack.gateway_url),
            what=f"gateway\n{stack.gateway.log_tail()}",
            timeout=_READY,
        )
        yield Secured(stack, settings.security, pki)
    finally:
        await stack.stop()


async def test_chat_completion_works_through_the_closed_plane(secured: Secured) -> None:
    body = {
        "model": BUNDLED_MODEL,
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    async with httpx.AsyncClient(base_url=secured.stack.gateway_url, timeout=180) as http:
        reply = await http.post("/engines/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
        verified = await http.post("/models/verify")
    assert verified.status_code == 200
    assert verified.json()["healthy"] is True and verified.json()["ok"] == 3


def _stranger(secured: Secured, kind: str) -> InternalSecurity:
    pki = secured.pki
    return {
        "plain": InternalSecurity(),
        "plain+token": InternalSecurity(token=TOKEN),
        "foreign-cert+token": InternalSecurity(
            ca_path=pki.ca, cert_path=pki.rogue_cert, key_path=pki.rogue_key, token=TOKEN
        ),
        "cert+wrong-token": InternalSecurity(
            ca_path=pki.ca, cert_path=pki.cert, key_path=pki.key, token=TOKEN + "-guess"
        ),
        "cert-only": InternalSecurity(ca_path=pki.ca, cert_path=pki.cert, key_path=pki.key),
    }[kind]


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("plain", grpc.StatusCode.UNAVAILABLE),
        ("plain+token", grpc.StatusCode.UNAVAILABLE),
        ("foreign-cert+token", grpc.StatusCode.UNAVAILABLE),
        ("cert+wrong-token", grpc.StatusCode.UNAUTHENTICATED),
        ("cert-only", grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_a_stranger_cannot_register_a_worker_or_fetch_a_blob(
    secured: Secured, kind: str, code: grpc.StatusCode
) -> None:
    settings = secured.stack.settings
    stranger = _stranger(secured, kind)
    async with open_channel(settings.registry_address, security=secured.security) as channel:
        model = await registry_pb2_grpc.RegistryStub(channel).InspectModel(
            registry_pb2.InspectModelRequest(reference=BUNDLED_MODEL), timeout=10
        )
    impostor = scheduler_pb2.WorkerInfo(
        worker_id=f"impostor-{kind}", address="127.0.0.1:1", memory_total_bytes=1 << 40
    )
    async with open_channel(settings.scheduler_address, security=stranger) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as registering:
            await scheduler_pb2_grpc.SchedulerStub(channel).Register(
                scheduler_pb2.RegisterRequest(worker=impostor), timeout=5
            )
        assert registering.value.code() == code
    async with open_channel(settings.scheduler_address, security=secured.security) as channel:
        workers = await scheduler_pb2_grpc.SchedulerStub(channel).ListWorkers(
            scheduler_pb2.ListWorkersRequest(), timeout=5
        )
    ids = {status.worker.worker_id for status in workers.workers}
    assert ids and impostor.worker_id not in ids
    async with open_channel(settings.registry_address, security=stranger) as channel:
        chunks = registry_pb2_grpc.RegistryStub(channel).FetchBlob(
            registry_pb2.FetchBlobRequest(digest=model.layers[0].digest), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as fetching:
            async for _ in chunks:
                pytest.fail("a stranger received blob bytes")
        assert fetching.value.code() == code
    if code == grpc.StatusCode.UNAUTHENTICATED:
        # Through TLS but without the token: probes still answer.
        assert await _serving(settings.registry_address, stranger)


async def test_token_only_plane_through_the_stack_launcher(stack_factory: StackFactory) -> None:
    """Without TLS the launcher's own readiness probe works (health stays open to token-less
    calls), and the token alone keeps strangers out."""
    async with stack_factory({"MODEL_RUNNER_INTERNAL_TOKEN": TOKEN}) as stack:
        address = stack.settings.registry_address
        async with open_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await registry_pb2_grpc.RegistryStub(channel).ListModels(
                    registry_pb2.ListModelsRequest(), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await _serving(address, InternalSecurity())
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
            listed = await http.get("/models")
        assert listed.status_code == 200
        assert BUNDLED_MODEL + ":latest" in listed.json()[0]["tags"]
