"""Proto <-> domain conversion for the types both the servicer and the worker client see."""

from __future__ import annotations

from modelrunner.v1 import common_pb2
from services.scheduler.snapshot import RunnerReport, RunnerState

__all__ = ["runner_from_proto", "runner_to_proto"]

_STATES = {state.value: state for state in RunnerState}


def runner_from_proto(info: common_pb2.RunnerInfo) -> RunnerReport:
    return RunnerReport(
        model_id=info.model_id,
        reference=info.reference,
        state=_STATES.get(int(info.state), RunnerState.UNSPECIFIED),
        generation=info.generation,
        in_flight=info.in_flight,
        memory_bytes=info.memory_bytes,
        error=info.error,
        context_size=info.context_size,
        parallel=info.parallel,
    )


def runner_to_proto(report: RunnerReport, *, in_flight: int | None = None) -> common_pb2.RunnerInfo:
    return common_pb2.RunnerInfo(
        model_id=report.model_id,
        reference=report.reference,
        state=common_pb2.RunnerState.ValueType(int(report.state)),
        generation=report.generation,
        in_flight=report.in_flight if in_flight is None else in_flight,
        memory_bytes=report.memory_bytes,
        error=report.error,
        context_size=report.context_size,
        parallel=report.parallel,
    )
