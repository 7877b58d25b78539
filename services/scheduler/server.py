"""modelrunner.v1.Scheduler over gRPC: proto <-> domain conversion and error -> status mapping."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from modelrunner.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.scheduler.config import SchedulerSettings
from services.scheduler.control import ControlPlane, PlacementStatus, WorkerStatus
from services.scheduler.convert import runner_from_proto, runner_to_proto
from services.scheduler.errors import (
    InsufficientMemory,
    InvalidRequest,
    LoadTimeout,
    ModelBusy,
    ModelNotFound,
    QueueFull,
    SchedulerError,
    Unavailable,
    UnknownLease,
)
from services.scheduler.model_configs import ConfigEntry, config_from_proto, config_to_proto
from services.scheduler.snapshot import WorkerSpec, WorkerView

__all__ = ["REASON_KEY", "SERVICE_NAME", "SchedulerServicer", "status_for"]

# Trailing metadata that tells the gateway which of two RESOURCE_EXHAUSTED answers this is
# (scheduler.proto documents the values).
REASON_KEY = "x-modelrunner-reason"
_REASONS: tuple[tuple[type[SchedulerError], str], ...] = (
    (InsufficientMemory, "insufficient-memory"),
    (QueueFull, "queue-full"),
)

SERVICE_NAME: str = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name

Context = grpc.aio.ServicerContext[Any, Any]

_STATUS: tuple[tuple[type[SchedulerError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelBusy, grpc.StatusCode.FAILED_PRECONDITION),
    (InsufficientMemory, grpc.StatusCode.RESOURCE_EXHAUSTED),
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
    reason = next((name for kind, name in _REASONS if isinstance(error, kind)), None)
    metadata = ((REASON_KEY, reason),) if reason else ()
    await context.abort(status_for(error), str(error), trailing_metadata=metadata)


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
        queued=status.queued,
        worker_tags=dict(status.worker_tags),
    )


def _worker_info(worker: WorkerView) -> scheduler_pb2.WorkerInfo:
    spec = worker.spec
    return scheduler_pb2.WorkerInfo(
        worker_id=spec.worker_id,
        address=spec.address,
        tags=dict(spec.tags),
        memory_total_bytes=spec.memory_total_bytes,
        memory_free_bytes=spec.memory_free_bytes,
        cache_bytes=spec.cache_bytes,
        max_runners=spec.max_runners,
    )


def _worker_status_to_proto(status: WorkerStatus) -> scheduler_pb2.WorkerStatus:
    return scheduler_pb2.WorkerStatus(
        worker=_worker_info(status.worker),
        alive=status.worker.alive,
        last_seen_ms=_millis(status.last_seen),
        memory_reserved_bytes=status.memory_reserved_bytes,
        runners=len(status.worker.runners),
        draining=status.worker.spec.draining,
    )


def _entry_to_proto(entry: ConfigEntry) -> scheduler_pb2.ModelConfigEntry:
    return scheduler_pb2.ModelConfigEntry(
        model_id=entry.model_id, reference=entry.reference, config=config_to_proto(entry.config)
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
            cache_bytes=info.cache_bytes,
            max_runners=max(0, info.max_runners),
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
            cache_bytes=request.cache_bytes,
            draining=request.draining,
        )
        return scheduler_pb2.HeartbeatResponse(known=known)

    async def Assign(
        self, request: scheduler_pb2.AssignRequest, context: Context
    ) -> scheduler_pb2.AssignResponse:
        try:
            assignment = await self._control.assign(
                request.model,
                affinity_key=request.affinity_key,
                prefix_hashes=list(request.prefix_hashes),
                priority=request.priority,
                required_tags=dict(request.required_tags),
                keep_alive=(
                    request.keep_alive_seconds if request.HasField("keep_alive_seconds") else None
                ),
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

    async def ConfigureModel(
        self, request: scheduler_pb2.ConfigureModelRequest, context: Context
    ) -> scheduler_pb2.ModelConfigEntry:
        try:
            if not request.model.strip():
                raise InvalidRequest("model is required")
            entry = await self._control.configure(request.model, config_from_proto(request.config))
        except SchedulerError as exc:
            await _abort(context, exc)
        return _entry_to_proto(entry)

    async def ListModelConfigs(
        self, request: scheduler_pb2.ListModelConfigsRequest, context: Context
    ) -> scheduler_pb2.ListModelConfigsResponse:
        try:
            entries = await self._control.model_configs(request.model)
        except SchedulerError as exc:
            await _abort(context, exc)
        return scheduler_pb2.ListModelConfigsResponse(
            entries=[_entry_to_proto(entry) for entry in entries]
        )

    async def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: Context
    ) -> scheduler_pb2.ListWorkersResponse:
        return scheduler_pb2.ListWorkersResponse(
            workers=[_worker_status_to_proto(status) for status in self._control.workers()]
        )
