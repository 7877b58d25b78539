"""Proto <-> domain conversions shared by the servicer and the membership client."""

from __future__ import annotations

from modelrunner.v1 import common_pb2, worker_pb2
from services.worker.artifact import Layer, ModelSpec
from services.worker.engine import Endpoint, LoadOptions
from services.worker.runner import RunnerSnapshot, RunnerState

__all__ = ["endpoint_from_proto", "load_options_from_proto", "model_spec_from_proto", "runner_info"]

_STATES = {
    RunnerState.STARTING: common_pb2.RUNNER_STATE_STARTING,
    RunnerState.READY: common_pb2.RUNNER_STATE_READY,
    RunnerState.DRAINING: common_pb2.RUNNER_STATE_DRAINING,
    RunnerState.STOPPED: common_pb2.RUNNER_STATE_STOPPED,
    RunnerState.FAILED: common_pb2.RUNNER_STATE_FAILED,
}

_ENDPOINTS = {
    common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS: Endpoint.CHAT_COMPLETIONS,
    common_pb2.ENDPOINT_KIND_COMPLETIONS: Endpoint.COMPLETIONS,
    common_pb2.ENDPOINT_KIND_EMBEDDINGS: Endpoint.EMBEDDINGS,
}


def runner_info(snapshot: RunnerSnapshot) -> common_pb2.RunnerInfo:
    return common_pb2.RunnerInfo(
        model_id=snapshot.model_id,
        reference=snapshot.reference,
        state=_STATES[snapshot.state],
        generation=snapshot.generation,
        in_flight=snapshot.in_flight,
        memory_bytes=snapshot.memory_bytes,
        error=snapshot.error,
        context_size=snapshot.context_size,
        parallel=snapshot.parallel,
    )


def model_spec_from_proto(model: common_pb2.Model) -> ModelSpec:
    return ModelSpec(
        model_id=model.id,
        layers=tuple(
            Layer(
                media_type=layer.media_type,
                digest=layer.digest,
                size=layer.size,
                annotations=dict(layer.annotations),
            )
            for layer in model.layers
        ),
        context_size=model.config.context_size,
    )


def load_options_from_proto(request: worker_pb2.LoadRequest) -> LoadOptions:
    return LoadOptions(
        context_size=request.context_size,
        parallel=request.parallel,
        llama_args=tuple(request.llama_args),
        memory_estimate_bytes=request.memory_estimate_bytes,
    )


def endpoint_from_proto(kind: common_pb2.EndpointKind.ValueType) -> Endpoint | None:
    """None for ENDPOINT_KIND_UNSPECIFIED or an unknown value."""
    return _ENDPOINTS.get(kind)
