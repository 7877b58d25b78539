"""Calls from the scheduler to workers (Load, Unload), behind the `WorkerClient` protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

from modelrunner.v1 import worker_pb2, worker_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.internal_security import InternalSecurity
from services.common.request_id import request_id_client_interceptors
from services.scheduler.convert import runner_from_proto
from services.scheduler.errors import LoadFailed, LoadTimeout, Unavailable
from services.scheduler.resolver import ResolvedModel
from services.scheduler.snapshot import RunnerReport, RunnerState, WorkerSpec

__all__ = ["GrpcWorkerClient", "LoadOptions", "WorkerClient"]


@dataclass(frozen=True)
class LoadOptions:
    """How a runner is started: what placement sized and the model's configuration asks."""

    # Tokens per slot.
    context_size: int = 0
    parallel: int = 0
    llama_args: tuple[str, ...] = ()
    # The estimate placement counted; the worker reports at least this as the runner's memory.
    memory_bytes: int = 0


class WorkerClient(Protocol):
    async def load(
        self, worker: WorkerSpec, model: ResolvedModel, options: LoadOptions, *, timeout: float
    ) -> RunnerReport:
        """Start the model and wait until it is ready. Raises LoadFailed or LoadTimeout."""
        ...

    async def unload(self, worker: WorkerSpec, model_id: str, *, timeout: float) -> bool:
        """Stop the model's runner; True if the worker had one. Raises Unavailable."""
        ...

    async def discard(self, address: str) -> None:
        """Forget a worker address that is no longer in use (closes its channel)."""
        ...

    async def aclose(self) -> None: ...


class GrpcWorkerClient:
    """modelrunner.v1.Worker over one cached channel per worker address."""

    def __init__(self, *, security: InternalSecurity | None = None) -> None:
        self._security = security
        # Bounded by the worker set: `discard` is called when a worker leaves or moves.
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerAsyncStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(
                address, interceptors=request_id_client_interceptors(), security=self._security
            )
        return worker_pb2_grpc.WorkerStub(channel)

    async def load(
        self, worker: WorkerSpec, model: ResolvedModel, options: LoadOptions, *, timeout: float
    ) -> RunnerReport:
        request = worker_pb2.LoadRequest(
            model=model.model,
            reference=model.reference,
            context_size=options.context_size,
            parallel=options.parallel,
            llama_args=options.llama_args,
            memory_estimate_bytes=options.memory_bytes,
        )
        try:
            response = await self._stub(worker.address).Load(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise LoadTimeout(
                    f"loading {model.reference} on worker {worker.worker_id} took longer than "
                    f"{timeout:.0f}s"
                ) from exc
            reason = exc.details() or exc.code().name
            raise LoadFailed(model.reference, worker.worker_id, reason) from exc
        if not response.runner.model_id:
            # A worker that answers OK without describing the runner is taken at its word.
            return RunnerReport(
                model_id=model.model_id, reference=model.reference, state=RunnerState.READY
            )
        return runner_from_proto(response.runner)

    async def unload(self, worker: WorkerSpec, model_id: str, *, timeout: float) -> bool:
        request = worker_pb2.UnloadRequest(model_id=model_id)
        try:
            response = await self._stub(worker.address).Unload(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"worker {worker.worker_id} did not unload {model_id}: "
                f"{exc.code().name} {exc.details() or ''}".strip()
            ) from exc
        return response.unloaded

    async def discard(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def aclose(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
