"""The one gRPC status -> HTTP mapping, as a table."""

from __future__ import annotations

import grpc
import orjson
import pytest

from services.gateway import errors
from services.gateway.errors import RpcStep


def rpc_error(code: grpc.StatusCode, details: str = "details") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "step", "status"),
    [
        (grpc.StatusCode.NOT_FOUND, RpcStep.ASSIGN, 404),
        (grpc.StatusCode.NOT_FOUND, RpcStep.MANAGEMENT, 404),
        (grpc.StatusCode.INVALID_ARGUMENT, RpcStep.ASSIGN, 400),
        (grpc.StatusCode.INVALID_ARGUMENT, RpcStep.MANAGEMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, RpcStep.ASSIGN, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, RpcStep.MANAGEMENT, 400),
        (grpc.StatusCode.ALREADY_EXISTS, RpcStep.MANAGEMENT, 409),
        (grpc.StatusCode.UNAUTHENTICATED, RpcStep.MANAGEMENT, 401),
        (grpc.StatusCode.PERMISSION_DENIED, RpcStep.MANAGEMENT, 403),
        (grpc.StatusCode.DATA_LOSS, RpcStep.MANAGEMENT, 502),
        (grpc.StatusCode.UNAVAILABLE, RpcStep.ASSIGN, 503),
        (grpc.StatusCode.UNAVAILABLE, RpcStep.MANAGEMENT, 503),
        (grpc.StatusCode.UNAVAILABLE, RpcStep.GENERATE, 502),
        (grpc.StatusCode.DEADLINE_EXCEEDED, RpcStep.ASSIGN, 504),
        (grpc.StatusCode.DEADLINE_EXCEEDED, RpcStep.GENERATE, 504),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RpcStep.ASSIGN, 503),
        (grpc.StatusCode.UNIMPLEMENTED, RpcStep.MANAGEMENT, 501),
        (grpc.StatusCode.INTERNAL, RpcStep.GENERATE, 502),
        (grpc.StatusCode.UNKNOWN, RpcStep.ASSIGN, 502),
        (grpc.StatusCode.CANCELLED, RpcStep.GENERATE, 502),
    ],
)
def test_status_mapping(code: grpc.StatusCode, step: RpcStep, status: int) -> None:
    err = errors.from_rpc_error(rpc_error(code, "the reason"), step)

    assert err.status_code == status
    assert "the reason" in err.message
    if status >= 500:
        assert err.error_type == "server_error"


def test_failed_precondition_is_a_conflict_where_the_caller_says_so() -> None:
    err = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION),
        RpcStep.MANAGEMENT,
        precondition=errors.Conflict,
    )
    assert err.status_code == 409
    unprocessable = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION),
        RpcStep.MANAGEMENT,
        precondition=errors.Unprocessable,
    )
    assert unprocessable.status_code == 422


@pytest.mark.parametrize(("retry_after", "header"), [(1.0, "1"), (2.5, "3"), (0.0, "1")])
def test_resource_exhausted_carries_retry_after(retry_after: float, header: str) -> None:
    err = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), RpcStep.ASSIGN, retry_after=retry_after
    )
    assert err.headers == {"Retry-After": header}


def test_not_found_without_details_says_model_not_found() -> None:
    err = errors.from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, ""), RpcStep.ASSIGN)
    assert err.message == "model not found"


def test_management_unavailable_names_the_peer() -> None:
    err = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"),
        RpcStep.MANAGEMENT,
        what="registry",
    )
    assert err.message == "registry unavailable: connection refused"


def test_error_body_and_sse_event_shapes() -> None:
    err = errors.UpstreamError("llama-server died")

    assert orjson.loads(errors.error_body(err)) == {
        "error": {
            "message": "llama-server died",
            "type": "server_error",
            "param": None,
            "code": 502,
        }
    }
    event = errors.sse_error_event(err)
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert orjson.loads(event[len(b"data: ") :]) == orjson.loads(errors.error_body(err))


def test_translate_rpc_errors_raises_gateway_errors() -> None:
    with pytest.raises(errors.Conflict):
        with errors.translate_rpc_errors("registry", precondition=errors.Conflict):
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION)


def rpc_error_with_reason(
    code: grpc.StatusCode, reason: str, details: str = "details"
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("other-key", "x"), (errors.REASON_KEY, reason)),
        details=details,
    )


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
def test_insufficient_memory_is_507_whatever_the_code(code: grpc.StatusCode) -> None:
    message = "ai/big needs 9.1 GiB; the largest worker has 4.0 GiB free after evicting idle models"
    err = errors.from_rpc_error(
        rpc_error_with_reason(code, "insufficient-memory", message), RpcStep.ASSIGN
    )

    assert isinstance(err, errors.InsufficientMemory)
    assert err.status_code == 507
    assert err.error_type == "insufficient_storage"
    assert err.message == message


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    ],
)
def test_queue_full_is_503_with_retry_after_whatever_the_code(code: grpc.StatusCode) -> None:
    err = errors.from_rpc_error(
        rpc_error_with_reason(code, "queue-full", "64 requests wait for ai/smollm2"),
        RpcStep.ASSIGN,
        retry_after=2.5,
    )

    assert err.status_code == 503
    assert err.headers == {"Retry-After": "3"}
    assert err.message == "64 requests wait for ai/smollm2"


def test_an_unknown_reason_falls_back_to_the_code() -> None:
    err = errors.from_rpc_error(
        rpc_error_with_reason(grpc.StatusCode.NOT_FOUND, "something-new"), RpcStep.ASSIGN
    )

    assert err.status_code == 404
    assert errors.rpc_reason(rpc_error(grpc.StatusCode.NOT_FOUND)) == ""
