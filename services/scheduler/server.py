"""modelrunner.v1.Scheduler over gRPC: proto <-> domain conversion and error -> status mapping."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from modelrunner.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.scheduler.config import SchedulerSettings
from services.scheduler.control import ControlPlane, PlacementStatus
from services.scheduler.convert import runner_from_proto, runner_to_proto
from services.scheduler.errors import (
    InvalidRequest,
    LoadTimeout,
    ModelNotFound,
    QueueFull,
    SchedulerError,
    Unavailable,
    UnknownLease,
)
from services.scheduler.snapshot import WorkerSpec

__all__ = ["SERVICE_NAME", "SchedulerServicer", "status_for"]

SERVICE_NAME: str = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name

Context = grpc.aio.ServicerContext[Any, Any]

_STATUS: tuple[tuple[type[SchedulerError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (UnknownLease, grpc.StatusCode.NOT_FOUND),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (LoadTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_for(error: SchedulerError) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: Context, error: SchedulerError) -> NoReturn:
    await context.abort(status_for(error), str(error))


def _millis(seconds: float | None) -> int:
    return 0 if seconds is None else int(seconds * 1000)


def _placement_to_proto(status: PlacementStatus) -> scheduler_pb2.Placement:
    runner = status.runner
    return scheduler_pb2.Placement(
        worker_id=runner.worker_id,
        worker_address=runner.worker_address,
        runner=runner_to_proto(runner.report, in_flight=runner.in_flight),
        in_flight=runner.in_flight,
        last_used_ms=_millis(status.last_used),
        expires_ms=_millis(status.expires),
    )


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, control: ControlPlane, settings: SchedulerSettings) -> None:
        self._control = control
        self._heartbeat_interval_ms = int(settings.heartbeat_interval * 1000)

    async def Register(
        self, request: scheduler_pb2.RegisterRequest, context: Context
    ) -> scheduler_pb2.RegisterResponse:
        info = request.worker
        spec = WorkerSpec(
            worker_id=info.worker_id,
            address=info.address,
            tags=dict(info.tags),
            memory_total_bytes=info.memory_total_bytes,
            memory_free_bytes=info.memory_free_bytes,
        )
        try:
            await self._control.register(spec, [runner_from_proto(r) for r in request.runners])
        except SchedulerError as exc:
            await _abort(context, exc)
        return scheduler_pb2.RegisterResponse(heartbeat_interval_ms=self._heartbeat_interval_ms)

    async def Heartbeat(
        self, request: scheduler_pb2.HeartbeatRequest, context: Context
    ) -> scheduler_pb2.HeartbeatResponse:
        known = self._control.heartbeat(
            request.worker_id,
            [runner_from_proto(r) for r in request.runners],
            request.memory_free_bytes,
        )
        return scheduler_pb2.HeartbeatResponse(known=known)

    async def Assign(
        self, request: scheduler_pb2.AssignRequest, context: Context
    ) -> scheduler_pb2.AssignResponse:
        try:
            assignment = await self._control.assign(
                request.model,
                affinity_key=request.affinity_key,
                timeout=context.time_remaining(),
            )
        except SchedulerError as exc:
            await _abort(context, exc)
        return scheduler_pb2.AssignResponse(
            lease_id=assignment.lease_id,
            worker_id=assignment.worker_id,
            worker_address=assignment.worker_address,
            model_id=assignment.model_id,
            reference=assignment.reference,
        )

    async def Release(
        self, request: scheduler_pb2.ReleaseRequest, context: Context
    ) -> scheduler_pb2.ReleaseResponse:
        try:
            self._control.release(request.lease_id, runner_failed=request.runner_failed)
        except SchedulerError as exc:
            await _abort(context, exc)
        return scheduler_pb2.ReleaseResponse()

    async def ListPlacements(
        self, request: scheduler_pb2.ListPlacementsRequest, context: Context
    ) -> scheduler_pb2.ListPlacementsResponse:
        return scheduler_pb2.ListPlacementsResponse(
            placements=[_placement_to_proto(status) for status in self._control.placements()]
        )

    async def UnloadModels(
        self, request: scheduler_pb2.UnloadModelsRequest, context: Context
    ) -> scheduler_pb2.UnloadModelsResponse:
        try:
            count = await self._control.unload_models(
                everything=request.all, models=list(request.models)
            )
        except SchedulerError as exc:
            await _abort(context, exc)
        return scheduler_pb2.UnloadModelsResponse(unloaded_runners=count)
