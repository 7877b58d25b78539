"""In-process grpc.aio fakes of the gateway's neighbours: registry, scheduler and worker.

Each records what it was asked and answers from a script the test sets, so a test can make a
neighbour fail at exactly the step it is about.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

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
from services.common.reference import InvalidReference, parse_reference

MODEL_ID = "sha256:" + "ab" * 32
REASON_KEY = "x-modelrunner-reason"

# A scripted failure: (code, details) or (code, details, x-modelrunner-reason).
Failure = tuple[grpc.StatusCode, str] | tuple[grpc.StatusCode, str, str]

Script = Callable[
    [worker_pb2.GenerateRequest, grpc.aio.ServicerContext],
    AsyncIterator[worker_pb2.GenerateResponse],
]


async def abort(context: grpc.aio.ServicerContext, failure: Failure) -> None:
    """End the call with `failure`, its reason (if any) in the trailing metadata."""
    code, details, *reason = failure
    metadata = ((REASON_KEY, reason[0]),) if reason else ()
    await context.abort(code, details, trailing_metadata=metadata)


def familiar(model: str) -> str:
    try:
        return parse_reference(model).familiar
    except InvalidReference:
        return model


def head(status: int = 200, content_type: str = "application/json") -> worker_pb2.GenerateResponse:
    return worker_pb2.GenerateResponse(
        head=worker_pb2.ResponseHead(status_code=status, content_type=content_type)
    )


def chunk(data: bytes) -> worker_pb2.GenerateResponse:
    return worker_pb2.GenerateResponse(chunk=data)


def answer(status: int, content_type: str, *chunks: bytes) -> Script:
    """A script that sends a head and the chunks, then ends the stream."""

    async def script(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(status, content_type)
        for data in chunks:
            yield chunk(data)

    return script


def fail(code: grpc.StatusCode, details: str, *before: worker_pb2.GenerateResponse) -> Script:
    """A script that sends `before`, then aborts with `code`."""

    async def script(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        for message in before:
            yield message
        await context.abort(code, details)

    return script


class FakeWorker(worker_pb2_grpc.WorkerServicer):
    def __init__(self) -> None:
        self.requests: list[worker_pb2.GenerateRequest] = []
        self.time_remaining: list[float | None] = []
        self.scripts: deque[Script] = deque()
        self.cancelled = asyncio.Event()
        # ScrapeMetrics answers `metrics`, or aborts with `metrics_error`, or with
        # `metrics_stall` never answers (until the caller's deadline cancels it).
        self.metrics: list[worker_pb2.RunnerMetrics] = []
        self.metrics_error: tuple[grpc.StatusCode, str] | None = None
        self.metrics_stall = False
        self.scrapes = 0

    async def ScrapeMetrics(
        self, request: worker_pb2.ScrapeMetricsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.ScrapeMetricsResponse:
        self.scrapes += 1
        if self.metrics_stall:
            await asyncio.Event().wait()
        if self.metrics_error is not None:
            await context.abort(*self.metrics_error)
        return worker_pb2.ScrapeMetricsResponse(runners=self.metrics)

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        self.requests.append(request)
        self.time_remaining.append(context.time_remaining())
        script = (
            self.scripts.popleft()
            if self.scripts
            else answer(200, "application/json", b'{"object":"chat.completion"}')
        )
        try:
            async for message in script(request, context):
                yield message
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@dataclass
class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    worker_address: str
    assign_requests: list[scheduler_pb2.AssignRequest] = field(default_factory=list)
    assign_time_remaining: list[float | None] = field(default_factory=list)
    # Consumed one per Assign before any success.
    assign_errors: deque[Failure] = field(default_factory=deque)
    # Consumed one per successful Assign; the worker address otherwise.
    addresses: deque[str] = field(default_factory=deque)
    releases: list[scheduler_pb2.ReleaseRequest] = field(default_factory=list)
    placements: list[scheduler_pb2.Placement] = field(default_factory=list)
    unload_requests: list[scheduler_pb2.UnloadModelsRequest] = field(default_factory=list)
    unloaded: int = 0
    # ConfigureModel stores entries by reference (as the real one, after resolving the model);
    # `configure_errors` are consumed one per call first.
    configure_requests: list[scheduler_pb2.ConfigureModelRequest] = field(default_factory=list)
    configure_errors: deque[Failure] = field(default_factory=deque)
    configs: dict[str, scheduler_pb2.ModelConfigEntry] = field(default_factory=dict)
    config_queries: list[str] = field(default_factory=list)
    workers: list[scheduler_pb2.WorkerStatus] = field(default_factory=list)
    workers_error: Failure | None = None

    async def Assign(
        self, request: scheduler_pb2.AssignRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.AssignResponse:
        self.assign_requests.append(request)
        self.assign_time_remaining.append(context.time_remaining())
        if self.assign_errors:
            await abort(context, self.assign_errors.popleft())
        address = self.addresses.popleft() if self.addresses else self.worker_address
        number = len(self.assign_requests)
        return scheduler_pb2.AssignResponse(
            lease_id=f"lease-{number}",
            worker_id="worker-1",
            worker_address=address,
            model_id=MODEL_ID,
            reference="ai/smollm2:latest",
        )

    async def Release(
        self, request: scheduler_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ReleaseResponse:
        self.releases.append(request)
        return scheduler_pb2.ReleaseResponse()

    async def ListPlacements(
        self, request: scheduler_pb2.ListPlacementsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListPlacementsResponse:
        return scheduler_pb2.ListPlacementsResponse(placements=self.placements)

    async def UnloadModels(
        self, request: scheduler_pb2.UnloadModelsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.UnloadModelsResponse:
        self.unload_requests.append(request)
        return scheduler_pb2.UnloadModelsResponse(unloaded_runners=self.unloaded)

    async def ConfigureModel(
        self, request: scheduler_pb2.ConfigureModelRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ModelConfigEntry:
        self.configure_requests.append(request)
        if self.configure_errors:
            await abort(context, self.configure_errors.popleft())
        reference = familiar(request.model)
        entry = scheduler_pb2.ModelConfigEntry(
            model_id=MODEL_ID, reference=reference, config=request.config
        )
        self.configs[reference] = entry
        return entry

    async def ListModelConfigs(
        self, request: scheduler_pb2.ListModelConfigsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListModelConfigsResponse:
        self.config_queries.append(request.model)
        entries = [
            entry
            for reference, entry in sorted(self.configs.items())
            if not request.model or familiar(request.model) == reference
        ]
        return scheduler_pb2.ListModelConfigsResponse(entries=entries)

    async def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListWorkersResponse:
        if self.workers_error is not None:
            await abort(context, self.workers_error)
        return scheduler_pb2.ListWorkersResponse(workers=self.workers)


def smollm2(*tags: str) -> common_pb2.Model:
    return common_pb2.Model(
        id=MODEL_ID,
        tags=list(tags or ("ai/smollm2:latest",)),
        created=1_700_000_000,
        config=common_pb2.ModelConfig(
            format="gguf",
            quantization="Q4_1",
            parameters="134.52M",
            architecture="llama",
            size="86.94MiB",
            gguf={"general.architecture": "llama", "llama.context_length": "8192"},
            context_size=8192,
        ),
    )


@dataclass
class FakeRegistry(registry_pb2_grpc.RegistryServicer):
    models: list[common_pb2.Model] = field(default_factory=list)
    tag_requests: list[registry_pb2.TagModelRequest] = field(default_factory=list)
    delete_requests: list[registry_pb2.DeleteModelRequest] = field(default_factory=list)
    # Pull/Push: the progress messages to send, then (optionally) a status to end with.
    transfer_events: list[registry_pb2.TransferProgress] = field(default_factory=list)
    transfer_failure: tuple[grpc.StatusCode, str] | None = None
    transfer_requests: list[registry_pb2.PullRequest | registry_pb2.PushRequest] = field(
        default_factory=list
    )
    # PackageUpload: the header and GGUF bytes received; a status to abort with once
    # `upload_failure_after` GGUF bytes arrived (0: right after the header).
    upload_headers: list[registry_pb2.PackageUploadHeader] = field(default_factory=list)
    upload_chunks: list[bytes] = field(default_factory=list)
    upload_failure: tuple[grpc.StatusCode, str] | None = None
    upload_failure_after: int = 0
    upload_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    purges: int = 0
    purge_failure: tuple[grpc.StatusCode, str] | None = None
    disk: registry_pb2.DiskUsageResponse = field(default_factory=registry_pb2.DiskUsageResponse)
    disk_failure: Failure | None = None
    # InspectRemote: the upstream's models by reference as sent; a failure to answer instead.
    remote_models: dict[str, common_pb2.Model] = field(default_factory=dict)
    remote_failure: Failure | None = None
    remote_requests: list[registry_pb2.InspectRemoteRequest] = field(default_factory=list)

    def _find(self, reference: str) -> common_pb2.Model | None:
        name = familiar(reference)
        for model in self.models:
            if reference in (model.id, model.id.removeprefix("sha256:")[:12]):
                return model
            if name in model.tags:
                return model
            # DMR's partial names: "smollm2" finds "ai/smollm2:latest".
            if any(tag.rsplit(":", 1)[0].rsplit("/", 1)[-1] == reference for tag in model.tags):
                return model
        return None

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        return registry_pb2.ListModelsResponse(models=self.models)

    async def InspectModel(
        self, request: registry_pb2.InspectModelRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.Model:
        model = self._find(request.reference)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.reference} not found")
        assert model is not None
        return model

    async def InspectRemote(
        self, request: registry_pb2.InspectRemoteRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.Model:
        self.remote_requests.append(request)
        if self.remote_failure is not None:
            await abort(context, self.remote_failure)
        model = self.remote_models.get(request.reference)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"manifest {request.reference} unknown")
        assert model is not None
        return model

    async def TagModel(
        self, request: registry_pb2.TagModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.TagModelResponse:
        self.tag_requests.append(request)
        model = self._find(request.source)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.source} not found")
        assert model is not None
        model.tags.append(request.target)
        return registry_pb2.TagModelResponse(target=request.target, model_id=model.id)

    async def DeleteModel(
        self, request: registry_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteModelResponse:
        self.delete_requests.append(request)
        model = self._find(request.reference)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.reference} not found")
        assert model is not None
        if len(model.tags) > 1 and not request.force:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {request.reference} has several tags; use force to delete",
            )
        self.models.remove(model)
        return registry_pb2.DeleteModelResponse(untagged=list(model.tags), deleted=[model.id])

    async def PackageUpload(
        self,
        request_iterator: AsyncIterator[registry_pb2.PackageUploadRequest],
        context: grpc.aio.ServicerContext,
    ) -> registry_pb2.PackageResponse:
        received = 0
        ended = False
        refused = False
        try:
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "header":
                    self.upload_headers.append(message.header)
                elif part == "end":
                    ended = True
                elif not refused:
                    self.upload_chunks.append(message.gguf_chunk)
                    received += len(message.gguf_chunk)
                # As the registry: a refused upload is read to its end before the error goes out.
                refused = refused or (
                    self.upload_failure is not None and received >= self.upload_failure_after
                )
        except asyncio.CancelledError:
            self.upload_cancelled.set()
            raise
        if refused and self.upload_failure is not None:
            await context.abort(*self.upload_failure)
        if not ended:
            # grpc.aio ends the stream quietly when the client cancels.
            self.upload_cancelled.set()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no end marker")
        header = self.upload_headers[-1]
        model = smollm2(header.tag)
        model.config.context_size = header.context_size or model.config.context_size
        self.models.append(model)
        return registry_pb2.PackageResponse(model=model)

    async def Purge(
        self, request: registry_pb2.PurgeRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.PurgeResponse:
        self.purges += 1
        if self.purge_failure is not None:
            await context.abort(*self.purge_failure)
        count = len(self.models)
        self.models.clear()
        return registry_pb2.PurgeResponse(deleted_models=count, deleted_blobs=3 * count)

    async def DiskUsage(
        self, request: registry_pb2.DiskUsageRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DiskUsageResponse:
        if self.disk_failure is not None:
            await abort(context, self.disk_failure)
        return self.disk

    async def _transfer(
        self,
        request: registry_pb2.PullRequest | registry_pb2.PushRequest,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.transfer_requests.append(request)
        for event in self.transfer_events:
            await context.write(event)
        if self.transfer_failure is not None:
            await context.abort(*self.transfer_failure)

    async def Pull(  # type: ignore[override]
        self, request: registry_pb2.PullRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await self._transfer(request, context)

    async def Push(  # type: ignore[override]
        self, request: registry_pb2.PushRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await self._transfer(request, context)
