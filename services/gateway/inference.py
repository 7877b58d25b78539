"""The inference hot path: one HTTP request -> Scheduler.Assign -> Worker.Generate -> HTTP answer.

The client's body is read once, parsed once (for `model`, `stream` and the routing hints) and
forwarded unchanged; the worker's chunks are written to the client exactly as they arrive. The
response head is awaited before the HTTP response starts, so llama-server's status (and any
failure to get that far) reaches the client as a real HTTP status; only a failure after a 200
streaming head becomes an SSE error event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import orjson

from modelrunner.v1 import common_pb2, scheduler_pb2, worker_pb2
from services.common.clock import Clock, SystemClock
from services.common.request_id import (
    REQUEST_ID_KEY,
    clean_request_id,
    current_request_id,
    new_request_id,
)
from services.gateway import errors
from services.gateway.clients import SchedulerClient, WorkerChannels, WorkerLease
from services.gateway.config import GatewaySettings
from services.gateway.hints import RoutingHints
from services.gateway.limits import cap_max_tokens
from services.gateway.metrics.exchange import current_exchange
from services.gateway.metrics.families import GatewayMetrics
from services.gateway.metrics.meter import StreamMeter

__all__ = [
    "REQUEST_ID_HEADER",
    "Envelope",
    "GenerateStream",
    "Inference",
    "InferenceRequest",
    "parse_envelope",
    "request_id_from",
]

_log = logging.getLogger(__name__)

REQUEST_ID_HEADER = REQUEST_ID_KEY


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    request_id: str
    endpoint: common_pb2.EndpointKind.ValueType
    model: str
    stream: bool
    body: bytes
    hints: RoutingHints = field(default_factory=RoutingHints)


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the gateway reads from a body: `model`, `stream`, and the parse itself, from which the
    routing hints are computed without parsing twice."""

    model: str
    stream: bool
    payload: dict[str, Any]


def request_id_from(headers: Mapping[str, str]) -> str:
    """The id of the request being served, as request_ids.py set it for the whole request; a
    request served without that middleware (a test) gets the header's id or a fresh one."""
    return (
        current_request_id() or clean_request_id(headers.get(REQUEST_ID_HEADER)) or new_request_id()
    )


def parse_envelope(body: bytes) -> Envelope:
    """`model` and `stream` from an OpenAI request body; the rest is llama-server's business."""
    if not body:
        raise errors.InvalidRequest("request body is empty; expected a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise errors.InvalidRequest("model is required", param="model")
    stream = payload.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise errors.InvalidRequest("stream must be a boolean", param="stream")
    return Envelope(model, stream, payload)


def _assign_request(request: InferenceRequest) -> scheduler_pb2.AssignRequest:
    hints = request.hints
    return scheduler_pb2.AssignRequest(
        request_id=request.request_id,
        model=request.model,
        endpoint=request.endpoint,
        affinity_key=hints.affinity_key,
        priority=hints.priority,
        required_tags=dict(hints.required_tags),
        prefix_hashes=hints.prefix_hashes,
        keep_alive_seconds=hints.keep_alive,
    )


class GenerateStream:
    """An open Worker.Generate call whose head has arrived; `close()` exactly once when done."""

    __slots__ = ("_lease", "_meter", "call", "head", "worker_id")

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[worker_pb2.GenerateRequest, worker_pb2.GenerateResponse],
        head: worker_pb2.ResponseHead,
        lease: WorkerLease,
        worker_id: str = "",
        meter: StreamMeter | None = None,
    ) -> None:
        self.call = call
        self.head = head
        # Which worker answers: sent back as X-Worker-Id so operators (and tests) can see routing.
        self.worker_id = worker_id
        self._lease = lease
        self._meter = meter

    async def read(self) -> bytes | None:
        """The next chunk of the body as the worker sent it; None at its end."""
        message = await self.call.read()
        # EOF is the only other thing read() returns (typed as a bare object).
        if not isinstance(message, worker_pb2.GenerateResponse):
            return None
        if self._meter is not None:
            self._meter.chunk(message.chunk)
        return message.chunk

    async def close(self) -> None:
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.finish()
        # A no-op when the call already finished; otherwise the worker sees the cancellation and
        # stops llama-server's generation.
        self.call.cancel()
        await self._lease.release()


class Inference:
    """Finds a worker for a request and opens the Generate stream, retrying a dead runner once."""

    def __init__(
        self,
        settings: GatewaySettings,
        scheduler: SchedulerClient,
        workers: WorkerChannels,
        clock: Clock | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._workers = workers
        self._clock = clock or SystemClock()
        # None when metrics are disabled: then the chunks pass unobserved.
        self._metrics = metrics

    @property
    def settings(self) -> GatewaySettings:
        return self._settings

    async def open(self, request: InferenceRequest) -> GenerateStream:
        """Assign, then Generate until the response head; raises errors.GatewayError."""
        cap = self._settings.max_tokens
        if cap > 0 and request.endpoint != common_pb2.ENDPOINT_KIND_EMBEDDINGS:
            request = replace(request, body=cap_max_tokens(request.body, cap))
        deadline = self._clock.monotonic() + self._settings.request_timeout
        assign_request = _assign_request(request)
        attempts = 1 + self._settings.unavailable_retries
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            assignment = await self._assign(assign_request, deadline, last=last)
            if assignment is None:
                continue
            try:
                return await self._generate(request, assignment, deadline)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and not last:
                    _log.warning(
                        "request %s: worker %s unavailable before the response head (%s); "
                        "retrying with a fresh Assign",
                        request.request_id,
                        assignment.worker_id or assignment.worker_address,
                        exc.details(),
                    )
                    continue
                raise errors.from_rpc_error(
                    exc, errors.RpcStep.GENERATE, retry_after=self._settings.retry_after
                ) from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def preload(self, request: InferenceRequest) -> None:
        """DMR's `X-Preload-Only`: get the model loaded somewhere, then hand the lease back."""
        deadline = self._clock.monotonic() + self._settings.request_timeout
        assign_request = _assign_request(request)
        attempts = 1 + self._settings.unavailable_retries
        for attempt in range(1, attempts + 1):
            assignment = await self._assign(assign_request, deadline, last=attempt == attempts)
            if assignment is None:
                continue
            try:
                await self._scheduler.release(
                    assignment.lease_id,
                    runner_failed=False,
                    timeout=self._settings.release_timeout,
                )
            except grpc.aio.AioRpcError as exc:
                _log.warning(
                    "releasing preload lease %s failed: %s", assignment.lease_id, exc.details()
                )
            return

    async def _assign(
        self, request: scheduler_pb2.AssignRequest, deadline: float, *, last: bool
    ) -> scheduler_pb2.AssignResponse | None:
        """The scheduler's answer; None when it was UNAVAILABLE and another attempt may follow.

        An UNAVAILABLE that carries a reason (errors.rpc_reason) is the scheduler's verdict, not
        a transient failure, so it is answered at once.
        """
        settings = self._settings
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise errors.UpstreamTimeout(
                f"no answer within GATEWAY_REQUEST_TIMEOUT ({settings.request_timeout:g}s)"
            )
        try:
            return await self._scheduler.assign(
                request, timeout=min(settings.assign_timeout, remaining)
            )
        except grpc.aio.AioRpcError as exc:
            if errors.rpc_reason(exc):
                raise errors.from_rpc_error(
                    exc, errors.RpcStep.ASSIGN, retry_after=settings.retry_after
                ) from None
            if exc.code() == grpc.StatusCode.UNAVAILABLE and not last:
                _log.warning(
                    "request %s: Assign unavailable (%s); retrying",
                    request.request_id,
                    exc.details(),
                )
                return None
            if exc.code() == grpc.StatusCode.UNAVAILABLE and not self._scheduler.reachable():
                # The scheduler itself is down, not "no worker for this model".
                raise errors.ServiceUnavailable(f"scheduler unavailable: {exc.details()}") from None
            raise errors.from_rpc_error(
                exc, errors.RpcStep.ASSIGN, retry_after=settings.retry_after
            ) from None

    async def _generate(
        self,
        request: InferenceRequest,
        assignment: scheduler_pb2.AssignResponse,
        deadline: float,
    ) -> GenerateStream:
        lease = await self._workers.acquire(assignment.worker_address)
        call = lease.stub.Generate(
            worker_pb2.GenerateRequest(
                request_id=request.request_id,
                model_id=assignment.model_id,
                endpoint=request.endpoint,
                stream=request.stream,
                lease_id=assignment.lease_id,
                body=request.body,
            ),
            timeout=max(deadline - self._clock.monotonic(), 0.001),
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            reachable = lease.reachable()
            await lease.release()
            if exc.code() == grpc.StatusCode.UNAVAILABLE and not reachable:
                await self._worker_unreachable(assignment)
            raise
        except BaseException:
            call.cancel()
            await lease.release()
            raise
        if not isinstance(first, worker_pb2.GenerateResponse) or not first.HasField("head"):
            call.cancel()
            await lease.release()
            raise errors.UpstreamError("worker ended the stream without a response head")
        return GenerateStream(
            call,
            first.head,
            lease,
            assignment.worker_id,
            self._meter(request, assignment, first.head),
        )

    def _meter(
        self,
        request: InferenceRequest,
        assignment: scheduler_pb2.AssignResponse,
        head: worker_pb2.ResponseHead,
    ) -> StreamMeter | None:
        """Labels the request with the resolved model, and meters a 2xx answer when metrics are
        on (an error answer has no tokens to time or count)."""
        exchange = current_exchange()
        if exchange is not None:
            exchange.model = assignment.reference
        if self._metrics is None or not 200 <= head.status_code < 300:
            return None
        return StreamMeter(
            self._metrics,
            self._clock,
            model=assignment.reference,
            started=exchange.started if exchange is not None else self._clock.monotonic(),
            streaming=request.stream,
        )

    async def _worker_unreachable(self, assignment: scheduler_pb2.AssignResponse) -> None:
        """The worker never saw the request, so it cannot release the lease: do it for it.

        runner_failed keeps the scheduler from routing the retry to the same dead worker, and a
        fresh channel avoids gRPC's reconnect backoff if the worker comes back on that address.
        """
        await self._workers.discard(assignment.worker_address)
        try:
            await self._scheduler.release(
                assignment.lease_id, runner_failed=True, timeout=self._settings.release_timeout
            )
        except grpc.aio.AioRpcError as exc:
            _log.warning(
                "releasing lease %s of unreachable worker %s failed: %s",
                assignment.lease_id,
                assignment.worker_address,
                exc.details(),
            )
