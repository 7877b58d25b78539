"""Everything the worker can fail with, and how llama-server's output becomes a typed error.

    WorkerError
    +-- BinaryNotFoundError        no usable llama-server binary (startup)
    +-- InvalidModelError          the artifact cannot run here (no GGUF layer, bad digest)
    +-- InvalidLoadOptionsError    a LoadRequest's options cannot be used (a reserved llama_arg)
    +-- CapacityError              WORKER_MAX_RUNNERS runners are already loaded or loading
    +-- ModelNotReadyError         Generate for a model with no READY runner on this worker
    +-- BlobFetchError             the registry could not deliver a layer
    |   +-- BlobVerificationError  the bytes did not match the descriptor's digest or size
    +-- RunnerStartError           llama-server exited before it was ready (reason from its output)
    |   +-- ModelLoadError         it could not load the model file
    |   +-- OutOfMemoryError       it could not allocate memory for the model
    |   +-- AddressInUseError      its socket could not be bound
    |   +-- InvalidArgumentsError  it rejected its command line (LLAMA_ARGS or llama_args)
    +-- RunnerTimeoutError         llama-server did not answer /health 200 within WORKER_READY_TIMEOUT
    +-- RunnerStoppedError         the runner was unloaded while it was starting
    +-- UpstreamError              llama-server could not be reached or broke off a response
    +-- InvalidTransitionError     a runner state change the state machine forbids (a bug)

`classify_exit` turns the tail of llama-server's output into one of the RunnerStartError types,
as DMR's `llamacpp/errors.go` does, so users read "not enough memory" instead of a log dump.
"""

from __future__ import annotations

import re
import signal

__all__ = [
    "AddressInUseError",
    "BinaryNotFoundError",
    "BlobFetchError",
    "BlobVerificationError",
    "CapacityError",
    "InvalidArgumentsError",
    "InvalidLoadOptionsError",
    "InvalidModelError",
    "InvalidTransitionError",
    "ModelLoadError",
    "ModelNotReadyError",
    "OutOfMemoryError",
    "RunnerStartError",
    "RunnerStoppedError",
    "RunnerTimeoutError",
    "UpstreamError",
    "WorkerError",
    "classify_exit",
    "crash_message",
]

# gRPC status messages travel in HTTP/2 trailers (8 KiB by default); keep the log excerpt short.
_MAX_DETAIL_CHARS = 1500


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class BinaryNotFoundError(WorkerError):
    pass


class InvalidModelError(WorkerError):
    pass


class InvalidLoadOptionsError(WorkerError):
    pass


class CapacityError(WorkerError):
    pass


class ModelNotReadyError(WorkerError):
    pass


class BlobFetchError(WorkerError):
    pass


class BlobVerificationError(BlobFetchError):
    pass


class RunnerStartError(WorkerError):
    """llama-server exited before it became ready; `output` is the tail of what it printed."""

    summary = "llama-server exited before it was ready"

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ModelLoadError(RunnerStartError):
    summary = "llama-server failed to load the model"


class OutOfMemoryError(RunnerStartError):
    summary = "not enough memory to load the model"


class AddressInUseError(RunnerStartError):
    summary = "llama-server could not bind its socket (address already in use)"


class InvalidArgumentsError(RunnerStartError):
    summary = "llama-server rejected its arguments (check LLAMA_ARGS and the model's llama_args)"


class RunnerTimeoutError(WorkerError):
    pass


class RunnerStoppedError(WorkerError):
    pass


class UpstreamError(WorkerError):
    """`connection_lost`: the connection failed or broke, so the runner is presumed dead."""

    def __init__(self, message: str, *, connection_lost: bool = False) -> None:
        super().__init__(message)
        self.connection_lost = connection_lost


class InvalidTransitionError(WorkerError):
    pass


# First match wins: memory errors often come with a "failed to load model" line after them.
_PATTERNS: tuple[tuple[re.Pattern[str], type[RunnerStartError]], ...] = (
    (
        re.compile(
            r"out of memory|cudaMalloc failed|failed to allocate|unable to allocate|"
            r"cannot allocate memory|insufficient memory|not enough memory",
            re.IGNORECASE,
        ),
        OutOfMemoryError,
    ),
    (
        re.compile(r"address already in use|couldn't bind|could not bind", re.IGNORECASE),
        AddressInUseError,
    ),
    (
        re.compile(r"invalid argument|unknown argument|error while handling argument", re.I),
        InvalidArgumentsError,
    ),
    (
        re.compile(
            r"error loading model|failed to load model|unable to load model|"
            r"unknown model architecture|failed to read magic",
            re.IGNORECASE,
        ),
        ModelLoadError,
    ),
)


# llama.cpp log lines look like "0.00.005.716 E llama_model_load: error loading model: ...".
_ERROR_LINE = re.compile(r"^\S+ E |error|failed", re.IGNORECASE)


def _excerpt(output: str) -> str:
    """The error lines of the output when it has some (the INFO lines bury them), else its end."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    text = "\n".join(errors or lines)
    if len(text) > _MAX_DETAIL_CHARS:
        text = "..." + text[-_MAX_DETAIL_CHARS:]
    return text


def _status(returncode: int | None) -> str:
    if returncode is None:
        return ""
    if returncode < 0:
        try:
            return f" (killed by {signal.Signals(-returncode).name})"
        except ValueError:
            return f" (killed by signal {-returncode})"
    return f" (exit status {returncode})"


def classify_exit(output: str, returncode: int | None) -> RunnerStartError:
    """The typed error for a llama-server that stopped before it was ready."""
    kind: type[RunnerStartError] = RunnerStartError
    for pattern, candidate in _PATTERNS:
        if pattern.search(output):
            kind = candidate
            break
    excerpt = _excerpt(output)
    message = f"{kind.summary}{_status(returncode)}"
    if excerpt:
        message += f": {excerpt}"
    return kind(message, excerpt)


def crash_message(output: str, returncode: int | None) -> str:
    """Why a llama-server that was serving stopped, for RunnerInfo.error."""
    excerpt = _excerpt(output)
    message = f"llama-server exited unexpectedly{_status(returncode)}"
    return f"{message}: {excerpt}" if excerpt else message
