"""In-memory stand-ins for the scheduler's neighbours, for tests below the gRPC layer."""

from __future__ import annotations

import asyncio

from modelrunner.v1 import common_pb2
from services.scheduler.errors import LoadFailed
from services.scheduler.resolver import ResolvedModel
from services.scheduler.snapshot import RunnerReport, RunnerState, WorkerSpec
from services.scheduler.workers import LoadOptions


def resolved(name: str = "m") -> ResolvedModel:
    model_id = "sha256:" + name.encode().hex().ljust(64, "0")[:64]
    return ResolvedModel(
        model_id=model_id,
        reference=f"ai/{name}:latest",
        model=common_pb2.Model(id=model_id, tags=[f"ai/{name}:latest"]),
    )


class MemoryWorkers:
    """A WorkerClient whose loads wait on `gate` and fail with `fail_with` when set."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_with: str | None = None
        self.loads: list[tuple[str, str]] = []
        self.options: list[LoadOptions] = []
        self.unloads: list[tuple[str, str]] = []
        self.unload_gate = asyncio.Event()
        self.unload_gate.set()
        self.closed = False

    async def load(
        self, worker: WorkerSpec, model: ResolvedModel, options: LoadOptions, *, timeout: float
    ) -> RunnerReport:
        self.loads.append((worker.worker_id, model.model_id))
        self.options.append(options)
        await self.gate.wait()
        if self.fail_with is not None:
            raise LoadFailed(model.reference, worker.worker_id, self.fail_with)
        return RunnerReport(
            model_id=model.model_id,
            reference=model.reference,
            state=RunnerState.READY,
            generation=len(self.loads),
            memory_bytes=options.memory_bytes,
            parallel=options.parallel,
            context_size=options.context_size,
        )

    async def unload(self, worker: WorkerSpec, model_id: str, *, timeout: float) -> bool:
        self.unloads.append((worker.worker_id, model_id))
        await self.unload_gate.wait()
        return True

    async def discard(self, address: str) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True
