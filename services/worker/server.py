"""The Worker gRPC service: proto <-> domain conversion and error -> status mapping only."""

from __future__ import annotations

import contextlib
import logging

import grpc

from modelrunner.v1 import worker_pb2, worker_pb2_grpc
from services.worker.convert import (
    endpoint_from_proto,
    load_options_from_proto,
    model_spec_from_proto,
    runner_info,
)
from services.worker.errors import (
    BlobFetchError,
    CapacityError,
    InvalidArgumentsError,
    InvalidLoadOptionsError,
    InvalidModelError,
    ModelLoadError,
    ModelNotReadyError,
    OutOfMemoryError,
    RunnerStartError,
    RunnerStoppedError,
    RunnerTimeoutError,
    UpstreamError,
    WorkerError,
)
from services.worker.leases import LeaseReleaser
from services.worker.metrics import MetricsScraper
from services.worker.pool import RunnerPool
from services.worker.runner import RunnerState

__all__ = ["SERVICE_NAME", "WorkerServicer", "status_for"]

SERVICE_NAME = "modelrunner.v1.Worker"

_log = logging.getLogger(__name__)

_LoadContext = grpc.aio.ServicerContext[worker_pb2.LoadRequest, worker_pb2.LoadResponse]
_UnloadContext = grpc.aio.ServicerContext[worker_pb2.UnloadRequest, worker_pb2.UnloadResponse]
_ListContext = grpc.aio.ServicerContext[
    worker_pb2.ListRunnersRequest, worker_pb2.ListRunnersResponse
]
_GenerateContext = grpc.aio.ServicerContext[worker_pb2.GenerateRequest, worker_pb2.GenerateResponse]
_ScrapeContext = grpc.aio.ServicerContext[
    worker_pb2.ScrapeMetricsRequest, worker_pb2.ScrapeMetricsResponse
]

# Most specific first.
_STATUS: tuple[tuple[type[WorkerError], grpc.StatusCode], ...] = (
    (InvalidModelError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidLoadOptionsError, grpc.StatusCode.INVALID_ARGUMENT),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OutOfMemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # Retrying elsewhere does not fix a model file or a command line llama-server rejects.
    (ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidArgumentsError, grpc.StatusCode.FAILED_PRECONDITION),
    (RunnerStartError, grpc.StatusCode.UNAVAILABLE),
    (RunnerTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (BlobFetchError, grpc.StatusCode.UNAVAILABLE),
    (ModelNotReadyError, grpc.StatusCode.UNAVAILABLE),
    (RunnerStoppedError, grpc.StatusCode.UNAVAILABLE),
    (UpstreamError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: WorkerError) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, pool: RunnerPool, leases: LeaseReleaser, metrics: MetricsScraper) -> None:
        self._pool = pool
        self._leases = leases
        self._metrics = metrics

    async def Load(
        self, request: worker_pb2.LoadRequest, context: _LoadContext
    ) -> worker_pb2.LoadResponse:
        if not request.HasField("model") or not request.model.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "LoadRequest.model is required")
        for name in ("context_size", "parallel", "memory_estimate_bytes"):
            if getattr(request, name) < 0:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"LoadRequest.{name} must be >= 0"
                )
        spec = model_spec_from_proto(request.model)
        try:
            snapshot = await self._pool.load(
                spec, request.reference, load_options_from_proto(request)
            )
        except WorkerError as exc:
            await context.abort(
                status_for(exc), f"loading {request.reference or spec.model_id}: {exc}"
            )
        return worker_pb2.LoadResponse(runner=runner_info(snapshot))

    async def Unload(
        self, request: worker_pb2.UnloadRequest, context: _UnloadContext
    ) -> worker_pb2.UnloadResponse:
        if not request.model_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "UnloadRequest.model_id is required"
            )
        return worker_pb2.UnloadResponse(unloaded=await self._pool.unload(request.model_id))

    async def ListRunners(
        self, request: worker_pb2.ListRunnersRequest, context: _ListContext
    ) -> worker_pb2.ListRunnersResponse:
        return worker_pb2.ListRunnersResponse(
            runners=[runner_info(snapshot) for snapshot in self._pool.snapshot()]
        )

    async def ScrapeMetrics(
        self, request: worker_pb2.ScrapeMetricsRequest, context: _ScrapeContext
    ) -> worker_pb2.ScrapeMetricsResponse:
        return worker_pb2.ScrapeMetricsResponse(
            runners=[
                worker_pb2.RunnerMetrics(
                    model_id=scraped.model_id, reference=scraped.reference, text=scraped.text
                )
                for scraped in await self._metrics.scrape()
            ]
        )

    async def Generate(  # type: ignore[override]
        self, request: worker_pb2.GenerateRequest, context: _GenerateContext
    ) -> None:
        """Head, then the engine's bytes; the lease is released before the stream ends."""
        endpoint = endpoint_from_proto(request.endpoint)
        if endpoint is None:
            await self._leases.release(request.lease_id, runner_failed=False)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "GenerateRequest.endpoint is required"
            )
        assert endpoint is not None
        runner_failed = False
        failure: WorkerError | None = None
        try:
            async with self._pool.acquire(request.model_id) as runner:
                try:
                    async with runner.client.forward(
                        endpoint, request.body, stream=request.stream
                    ) as upstream:
                        await context.write(
                            worker_pb2.GenerateResponse(
                                head=worker_pb2.ResponseHead(
                                    status_code=upstream.status_code,
                                    content_type=upstream.content_type,
                                )
                            )
                        )
                        async with contextlib.aclosing(upstream.chunks()) as chunks:
                            async for chunk in chunks:
                                await context.write(worker_pb2.GenerateResponse(chunk=chunk))
                except UpstreamError as exc:
                    runner_failed = exc.connection_lost or runner.state is RunnerState.FAILED
                    raise
        except WorkerError as exc:
            failure = exc
        finally:
            # Also on cancellation: the scheduler must not count (or route to) this request.
            await self._leases.release(request.lease_id, runner_failed=runner_failed)
        if failure is not None:
            _log.info("request %s failed: %s", request.request_id, failure)
            await context.abort(status_for(failure), str(failure))
