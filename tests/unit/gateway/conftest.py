"""Fixtures: fake neighbours on 127.0.0.1:0 and the real gateway app in front of them.

Two ways to reach the gateway: in-process through httpx's ASGITransport (fast; it buffers the
response body, so streaming behaviour is tested against a real uvicorn server on a free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
import uvicorn

from modelrunner.v1 import registry_pb2_grpc, scheduler_pb2_grpc, worker_pb2_grpc
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from tests.support.processes import free_port
from tests.unit.gateway.fakes import FakeRegistry, FakeScheduler, FakeWorker, smollm2


@dataclass
class Neighbours:
    registry: FakeRegistry
    scheduler: FakeScheduler
    worker: FakeWorker
    control_address: str
    worker_address: str


@pytest.fixture
async def neighbours() -> AsyncIterator[Neighbours]:
    worker = FakeWorker()
    worker_server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(worker, worker_server)
    worker_port = worker_server.add_insecure_port("127.0.0.1:0")
    await worker_server.start()
    worker_address = f"127.0.0.1:{worker_port}"

    registry = FakeRegistry(models=[smollm2()])
    scheduler = FakeScheduler(worker_address=worker_address)
    control_server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServicer_to_server(registry, control_server)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(scheduler, control_server)
    control_port = control_server.add_insecure_port("127.0.0.1:0")
    await control_server.start()
    try:
        yield Neighbours(
            registry=registry,
            scheduler=scheduler,
            worker=worker,
            control_address=f"127.0.0.1:{control_port}",
            worker_address=worker_address,
        )
    finally:
        await control_server.stop(None)
        await worker_server.stop(None)


@pytest.fixture
def settings(neighbours: Neighbours) -> GatewaySettings:
    return GatewaySettings(
        registry_address=neighbours.control_address,
        scheduler_address=neighbours.control_address,
        request_timeout=20.0,
        assign_timeout=10.0,
        rpc_timeout=5.0,
        max_body_bytes=4096,
        release_timeout=2.0,
        shutdown_grace=2.0,
        access_log=False,
    )


@contextlib.asynccontextmanager
async def asgi_client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(settings) as gateway:
        yield gateway


class _InProcessServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The test runner owns the process's signals.
        yield


@contextlib.asynccontextmanager
async def live_gateway(settings: GatewaySettings) -> AsyncIterator[str]:
    """The gateway served by uvicorn (httptools) on a free port; yields its base URL."""
    settings = dataclasses.replace(settings, listen_host="127.0.0.1", port=free_port())
    config = uvicorn.Config(
        create_app(settings),
        host=settings.listen_host,
        port=settings.port,
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = _InProcessServer(config)
    serving = asyncio.create_task(server.serve(), name="uvicorn")
    deadline = time.monotonic() + 10
    while not server.started:
        if serving.done():
            serving.result()
            raise AssertionError("uvicorn exited before it started")
        if time.monotonic() > deadline:
            raise AssertionError("uvicorn did not start within 10s")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=10)


@pytest.fixture
async def live_url(settings: GatewaySettings) -> AsyncIterator[str]:
    async with live_gateway(settings) as url:
        yield url
