"""Every failure the CLI reports. `app.run_cli` catches CliError in one place and prints
`Error: <message>` on one line of stderr, exiting with `exit_code`.

    CliError                     exit 1: an expected failure with a message for the user
    ├── GatewayUnreachable       nothing answers at MODEL_RUNNER_HOST
    ├── GatewayTimeout           the gateway went silent longer than a configured limit
    ├── ConnectionLost           the connection dropped in the middle of an answer
    ├── ApiError                 the gateway answered an HTTP error (status + OpenAI error body)
    │   ├── NotFoundError        404: unknown model or route
    │   └── ConflictError        409: e.g. removing a model with several tags without --force
    ├── StreamError              a stream that had started reported an error (SSE or NDJSON)
    ├── LogsError                the log directory or a log file is missing
    └── InputError               a local file or input the command needs cannot be read
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "CliError",
    "ConflictError",
    "ConnectionLost",
    "GatewayTimeout",
    "GatewayUnreachable",
    "InputError",
    "LogsError",
    "NotFoundError",
    "StreamError",
    "api_error",
]


class CliError(Exception):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def one_line(self) -> str:
        """The message as one line: gateway messages can carry newlines (llama-server output)."""
        return " ".join(self.message.split())


class GatewayUnreachable(CliError):
    def __init__(self, url: str) -> None:
        super().__init__(
            f"cannot reach Model Runner at {url}: start it with `make run` "
            "(or set MODEL_RUNNER_HOST)"
        )
        self.url = url


class GatewayTimeout(CliError):
    pass


class ConnectionLost(CliError):
    pass


class ApiError(CliError):
    def __init__(self, status: int, message: str, error_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class NotFoundError(ApiError):
    pass


class ConflictError(ApiError):
    pass


class StreamError(CliError):
    pass


class LogsError(CliError):
    pass


class InputError(CliError):
    pass


def api_error(status: int, message: str, error_type: str = "") -> ApiError:
    """The ApiError subclass for an HTTP status."""
    if status == 404:
        return NotFoundError(status, message, error_type)
    if status == 409:
        return ConflictError(status, message, error_type)
    return ApiError(status, message, error_type)
