"""llama-server output -> typed error, and typed error -> gRPC status: both tables."""

from __future__ import annotations

import grpc
import pytest

from services.worker import errors
from services.worker.errors import classify_exit, crash_message
from services.worker.server import status_for

REAL_BAD_MODEL = """\
0.00.002.361 I srv    load_model: loading model '/etc/hostname'
0.00.005.716 E gguf_init_from_reader: failed to read magic
0.00.005.729 E llama_model_load: error loading model: llama_model_loader: failed to load model from /etc/hostname
0.00.005.735 E srv    load_model: failed to load model, '/etc/hostname'
0.00.006.198 E srv  llama_server: exiting due to model loading error
"""


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        pytest.param(REAL_BAD_MODEL, errors.ModelLoadError, id="real-bad-model"),
        (
            "llama_model_load: error loading model: unknown model architecture: 'x'",
            errors.ModelLoadError,
        ),
        ("unable to load model", errors.ModelLoadError),
        (
            "ggml_cuda_host_malloc: failed to allocate 4096.00 MiB of pinned memory: out of memory",
            errors.OutOfMemoryError,
        ),
        ("cudaMalloc failed: out of memory\nfailed to load model", errors.OutOfMemoryError),
        (
            "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 9999",
            errors.OutOfMemoryError,
        ),
        (
            "E srv start: couldn't bind HTTP server socket, hostname: /tmp/a.sock, port: 8080",
            errors.AddressInUseError,
        ),
        ("bind: Address already in use", errors.AddressInUseError),
        ("error: invalid argument: --bogus-flag", errors.InvalidArgumentsError),
        ("Segmentation fault", errors.RunnerStartError),
        ("", errors.RunnerStartError),
    ],
)
def test_classify_exit(output: str, kind: type[errors.RunnerStartError]) -> None:
    error = classify_exit(output, 1)
    assert type(error) is kind
    assert str(error).startswith(kind.summary)
    assert "(exit status 1)" in str(error)


def test_message_keeps_error_lines_and_drops_info_noise() -> None:
    error = classify_exit(REAL_BAD_MODEL, 1)
    assert "failed to read magic" in str(error)
    assert "loading model '/etc/hostname'" not in str(error)  # an INFO line


def test_message_is_bounded() -> None:
    error = classify_exit("error: " + "x" * 100_000, None)
    assert len(str(error)) < 2000
    assert "exit status" not in str(error)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidModelError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.CapacityError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.OutOfMemoryError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.ModelLoadError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.InvalidArgumentsError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.AddressInUseError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.RunnerStartError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.RunnerTimeoutError("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.BlobFetchError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.BlobVerificationError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.ModelNotReadyError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.RunnerStoppedError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.UpstreamError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.InvalidTransitionError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_for(error: errors.WorkerError, code: grpc.StatusCode) -> None:
    assert status_for(error) == code


def test_exit_by_signal_is_named() -> None:
    assert "(killed by SIGKILL)" in str(classify_exit("", -9))


def test_crash_message_after_ready() -> None:
    message = crash_message("0.1 I slot ok\n0.2 E ggml_abort: GGML_ASSERT failed", -6)
    assert message == (
        "llama-server exited unexpectedly (killed by SIGABRT): 0.2 E ggml_abort: GGML_ASSERT failed"
    )
