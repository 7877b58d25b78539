"""Fakes of the scheduler's neighbours (workers, registry) and a clock the tests move by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from modelrunner.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from services.common.grpc_server import GrpcServer
from services.scheduler.app import SchedulerApp
from services.scheduler.config import SchedulerSettings
from services.scheduler.resolver import GrpcModelResolver
from services.scheduler.server import SERVICE_NAME, SchedulerServicer
from services.scheduler.workers import GrpcWorkerClient

Context = grpc.aio.ServicerContext[Any, Any]


class FakeClock:
    """Monotonic and wall time that only move when the test says so."""

    def __init__(self, start: float = 10_000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self._now += seconds


def make_model(name: str, digit: str, context_size: int = 8192) -> common_pb2.Model:
    return common_pb2.Model(
        id="sha256:" + digit * 64,
        tags=[f"ai/{name}:latest"],
        config=common_pb2.ModelConfig(format="gguf", context_size=context_size),
    )


SMOLLM2 = make_model("smollm2", "a")
QWEN = make_model("qwen", "b")


async def _unimplemented(context: Context) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of this fake")


class FakeRegistry(registry_pb2_grpc.RegistryServicer):
    """Registry.InspectModel over a fixed set of models."""

    def __init__(self, models: list[common_pb2.Model]) -> None:
        self.models = models
        self.inspect_calls: list[str] = []
        self._server: grpc.aio.Server | None = None
        self.address = ""

    async def InspectModel(
        self, request: registry_pb2.InspectModelRequest, context: Context
    ) -> common_pb2.Model:
        self.inspect_calls.append(request.reference)
        for model in self.models:
            if request.reference in model.tags or request.reference == model.id:
                return model
        await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.reference} not found")

    async def Package(self, request: Any, context: Context) -> Any:
        await _unimplemented(context)

    async def ListModels(self, request: Any, context: Context) -> Any:
        await _unimplemented(context)

    async def TagModel(self, request: Any, context: Context) -> Any:
        await _unimplemented(context)

    async def DeleteModel(self, request: Any, context: Context) -> Any:
        await _unimplemented(context)

    async def FetchBlob(
        self, request: Any, context: Context
    ) -> AsyncIterator[registry_pb2.BlobChunk]:
        await _unimplemented(context)
        yield registry_pb2.BlobChunk()

    async def start(self) -> None:
        self._server = grpc.aio.server()
        registry_pb2_grpc.add_RegistryServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)


class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """Worker.Load/Unload with a gate (hold loads until the test opens it) and a failure switch.

    It does not heartbeat by itself: the test plays the worker's heartbeat loop through
    `register` and `heartbeat`, so it decides when a worker goes silent.
    """

    def __init__(self, worker_id: str, memory_free: int = 8 << 30) -> None:
        self.worker_id = worker_id
        self.memory_free = memory_free
        self.runners: dict[str, common_pb2.RunnerInfo] = {}
        self.load_calls: list[str] = []
        self.load_requests: list[worker_pb2.LoadRequest] = []
        self.unload_calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_with: str | None = None
        # Reported as WorkerInfo.max_runners (0: no limit).
        self.max_runners = 0
        self._generation = 0
        self._server: grpc.aio.Server | None = None
        self.address = ""

    async def Load(
        self, request: worker_pb2.LoadRequest, context: Context
    ) -> worker_pb2.LoadResponse:
        self.load_calls.append(request.model.id)
        self.load_requests.append(request)
        await self.gate.wait()
        if self.fail_with is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.fail_with)
        self._generation += 1
        runner = common_pb2.RunnerInfo(
            model_id=request.model.id,
            reference=request.reference,
            state=common_pb2.RUNNER_STATE_READY,
            generation=self._generation,
            context_size=request.context_size,
            parallel=request.parallel,
            memory_bytes=request.memory_estimate_bytes,
        )
        self.runners[request.model.id] = runner
        return worker_pb2.LoadResponse(runner=runner)

    async def Unload(
        self, request: worker_pb2.UnloadRequest, context: Context
    ) -> worker_pb2.UnloadResponse:
        self.unload_calls.append(request.model_id)
        return worker_pb2.UnloadResponse(
            unloaded=self.runners.pop(request.model_id, None) is not None
        )

    async def Generate(
        self, request: Any, context: Context
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        await _unimplemented(context)
        yield worker_pb2.GenerateResponse()

    async def ListRunners(self, request: Any, context: Context) -> Any:
        await _unimplemented(context)

    def preload(self, model: common_pb2.Model) -> None:
        """A runner the worker already has (started before this scheduler, say)."""
        self._generation += 1
        self.runners[model.id] = common_pb2.RunnerInfo(
            model_id=model.id,
            reference=model.tags[0],
            state=common_pb2.RUNNER_STATE_READY,
            generation=self._generation,
        )

    def info(self) -> scheduler_pb2.WorkerInfo:
        return scheduler_pb2.WorkerInfo(
            worker_id=self.worker_id,
            address=self.address,
            tags={"accelerator": "cpu"},
            memory_total_bytes=16 << 30,
            memory_free_bytes=self.memory_free,
            max_runners=self.max_runners,
        )

    async def register(self, stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> int:
        reply = await stub.Register(
            scheduler_pb2.RegisterRequest(worker=self.info(), runners=list(self.runners.values())),
            timeout=5,
        )
        return reply.heartbeat_interval_ms

    async def heartbeat(
        self, stub: scheduler_pb2_grpc.SchedulerAsyncStub, *, draining: bool = False
    ) -> bool:
        reply = await stub.Heartbeat(
            scheduler_pb2.HeartbeatRequest(
                worker_id=self.worker_id,
                runners=list(self.runners.values()),
                memory_free_bytes=self.memory_free,
                draining=draining,
            ),
            timeout=5,
        )
        return reply.known

    async def start(self) -> None:
        self._server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        self.gate.set()
        if self._server is not None:
            await self._server.stop(0)


@dataclass
class Scheduler:
    """One running scheduler (the real app and servicer) and a client stub to it."""

    app: SchedulerApp
    stub: scheduler_pb2_grpc.SchedulerAsyncStub
    address: str


@dataclass
class Cluster:
    clock: FakeClock
    registry: FakeRegistry
    workers: dict[str, FakeWorker]
    env: Mapping[str, str] = field(default_factory=dict)

    @asynccontextmanager
    async def scheduler(self) -> AsyncIterator[Scheduler]:
        # Configurations stay in memory unless a test names a file.
        settings = SchedulerSettings.from_env(
            {"REGISTRY_ADDRESS": self.registry.address, "SCHEDULER_STATE_PATH": "", **self.env}
        )
        app = SchedulerApp(
            settings,
            resolver=GrpcModelResolver(self.registry.address),
            workers=GrpcWorkerClient(),
            clock=self.clock,
        )
        server = GrpcServer("127.0.0.1:0", [SERVICE_NAME])
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(
            SchedulerServicer(app.control, settings), server.server
        )
        async with app:
            port = await server.start()
            address = f"127.0.0.1:{port}"
            channel = grpc.aio.insecure_channel(address)
            try:
                yield Scheduler(
                    app=app, stub=scheduler_pb2_grpc.SchedulerStub(channel), address=address
                )
            finally:
                await channel.close()
                await server.stop(0)


@asynccontextmanager
async def cluster(
    worker_ids: tuple[str, ...] = ("w1", "w2"),
    env: Mapping[str, str] | None = None,
    models: list[common_pb2.Model] | None = None,
) -> AsyncIterator[Cluster]:
    """A fake registry and fake workers; `w1` has the most free memory, so it is placed first."""
    registry = FakeRegistry(models if models is not None else [SMOLLM2, QWEN])
    workers = {
        worker_id: FakeWorker(worker_id, memory_free=(8 << 30) - index)
        for index, worker_id in enumerate(worker_ids)
    }
    await registry.start()
    try:
        for worker in workers.values():
            await worker.start()
        yield Cluster(clock=FakeClock(), registry=registry, workers=workers, env=env or {})
    finally:
        for worker in workers.values():
            await worker.stop()
        await registry.stop()


async def poll(predicate: Any, *, timeout: float = 5.0, what: str) -> None:
    """Wait until `predicate()` is true, checking between event-loop turns."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
