from __future__ import annotations

import grpc
import pytest

from services.scheduler.errors import (
    InvalidModelReference,
    InvalidRequest,
    LoadFailed,
    LoadTimeout,
    ModelNotFound,
    NoWorkerAvailable,
    QueueFull,
    RegistryUnavailable,
    SchedulerError,
    ShuttingDown,
    UnknownLease,
)
from services.scheduler.server import status_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidModelReference("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (UnknownLease("x"), grpc.StatusCode.NOT_FOUND),
        (NoWorkerAvailable("x"), grpc.StatusCode.UNAVAILABLE),
        (LoadFailed("ai/m", "w1", "boom"), grpc.StatusCode.UNAVAILABLE),
        (RegistryUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (ShuttingDown("x"), grpc.StatusCode.UNAVAILABLE),
        (LoadTimeout("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (QueueFull("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (SchedulerError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_for(error: SchedulerError, code: grpc.StatusCode) -> None:
    assert status_for(error) is code


def test_load_failed_carries_the_reason() -> None:
    error = LoadFailed("ai/m:latest", "w1", "llama-server: failed to load model")
    assert error.reason == "llama-server: failed to load model"
    assert (
        str(error) == "failed to load ai/m:latest on worker w1: llama-server: failed to load model"
    )
