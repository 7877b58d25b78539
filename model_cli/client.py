"""The gateway's HTTP API as Python calls: one httpx client, every call under a timeout, every
failure turned into a CliError (errors.py) in this module only.

Short calls wait at most `request_timeout` for each read; streams (pull, push, package, chat) at
most `stream_idle_timeout` between two reads, so a long transfer may take as long as it needs
while a stalled one still ends.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from model_cli.config import CliSettings
from model_cli.errors import (
    CliError,
    ConnectionLost,
    GatewayTimeout,
    GatewayUnreachable,
    NotFoundError,
    StreamError,
    api_error,
)
from model_cli.version import cli_version
from model_cli.wire import (
    ChatChunk,
    TransferEvent,
    error_from_body,
    iter_sse_data,
    parse_chat_chunk,
    parse_transfer_line,
)

__all__ = ["CHAT_PATH", "COMPLETIONS_PATH", "GatewayClient", "PackageUpload"]

CHAT_PATH = "/engines/v1/chat/completions"
COMPLETIONS_PATH = "/engines/v1/completions"
_PRELOAD_HEADER = "X-Preload-Only"
_LICENSE_HEADER = "X-Model-License"
_CHAT_TEMPLATE_HEADER = "X-Model-Chat-Template"

Json = Any


def _model_path(name: str) -> str:
    # Names keep their slashes (`/models/{name:path}`); anything else odd is escaped.
    return quote(name.strip().strip("/"), safe="/:@")


@dataclass(frozen=True)
class PackageUpload:
    """`package`: the GGUF sent as the body, the small text files as base64 headers."""

    gguf: Path
    tag: str
    context_size: int = 0
    license: bytes = b""
    chat_template: bytes = b""


class GatewayClient:
    def __init__(
        self,
        settings: CliSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 16,
    ) -> None:
        self._settings = settings
        self.base_url = settings.host
        self._short = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
        self._long = httpx.Timeout(settings.stream_idle_timeout, connect=settings.connect_timeout)
        self._http = httpx.Client(
            base_url=settings.host,
            timeout=self._short,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
            headers={
                "User-Agent": f"model-cli/{cli_version()}",
                **({"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}),
            },
            # The gateway is local or named explicitly; proxy variables meant for the internet
            # must not reroute it.
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _translate(self, limit: float, setting: str) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise GatewayUnreachable(self.base_url) from None
        except httpx.TimeoutException:
            raise GatewayTimeout(
                f"Model Runner at {self.base_url} sent nothing for {limit:g}s ({setting})"
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise ConnectionLost(
                f"connection to Model Runner at {self.base_url} was lost: {exc or type(exc).__name__}"
            ) from None
        except httpx.HTTPError as exc:
            raise CliError(f"request to Model Runner at {self.base_url} failed: {exc}") from None

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.is_error:
            message, error_type = error_from_body(response.status_code, response.read())
            raise api_error(response.status_code, message, error_type)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._translate(self._settings.request_timeout, "MODEL_CLI_TIMEOUT"):
            response = self._http.request(method, path, **kwargs)
        self._raise_for_status(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Json:
        response = self._call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"{method} {path}: the gateway answered something that is not JSON"
            ) from None

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        with (
            self._translate(self._settings.stream_idle_timeout, "MODEL_CLI_STREAM_IDLE_TIMEOUT"),
            self._http.stream(method, path, timeout=self._long, **kwargs) as response,
        ):
            self._raise_for_status(response)
            yield response

    def _transfer(self, method: str, path: str, body: Json) -> Generator[TransferEvent, None, None]:
        # Asking for JSON also makes a real DMR daemon skip its HTML escaping of the lines.
        headers = {"Accept": "application/json"}
        with self._stream(method, path, json=body, headers=headers) as response:
            for line in response.iter_lines():
                try:
                    event = parse_transfer_line(line)
                except ValueError:
                    raise StreamError(
                        f"unexpected progress line from the gateway: {line[:80]!r}"
                    ) from None
                if event is not None:
                    yield event

    # -- models --------------------------------------------------------------------------------

    def list_models(self) -> list[Json]:
        models = self._json("GET", "/models")
        return list(models) if isinstance(models, list) else []

    def list_openai_models(self) -> Json:
        return self._json("GET", "/engines/v1/models")

    def inspect(self, name: str, *, remote: bool = False) -> Json:
        params = {"remote": "true"} if remote else None
        return self._json("GET", f"/models/{_model_path(name)}", params=params)

    def inspect_openai(self, name: str) -> Json:
        return self._json("GET", f"/engines/v1/models/{_model_path(name)}")

    def has_model(self, name: str) -> bool:
        try:
            self.inspect(name)
        except NotFoundError:
            return False
        return True

    def pull(self, reference: str, bearer_token: str = "") -> Generator[TransferEvent, None, None]:
        body: dict[str, str] = {"from": reference}
        if bearer_token:
            body["bearer-token"] = bearer_token
        return self._transfer("POST", "/models/create", body)

    def push(self, name: str, bearer_token: str = "") -> Generator[TransferEvent, None, None]:
        body = {"bearer-token": bearer_token} if bearer_token else {}
        return self._transfer("POST", f"/models/{_model_path(name)}/push", body)

    def tag(self, source: str, repository: str, tag: str) -> Json:
        params = {"repo": repository, "tag": tag}
        return self._json("POST", f"/models/{_model_path(source)}/tag", params=params)

    def remove(self, name: str, *, force: bool) -> list[Json]:
        params = {"force": "true" if force else "false"}
        actions = self._json("DELETE", f"/models/{_model_path(name)}", params=params)
        return list(actions) if isinstance(actions, list) else []

    def purge(self) -> Json:
        return self._json("DELETE", "/models/purge")

    def verify(self) -> Json:
        """`POST /models/verify` (this project's extension): the registry re-hashes every blob."""
        limit = self._settings.verify_timeout
        timeout = httpx.Timeout(limit, connect=self._settings.connect_timeout)
        with self._translate(limit, "MODEL_CLI_VERIFY_TIMEOUT"):
            response = self._http.request("POST", "/models/verify", timeout=timeout)
        self._raise_for_status(response)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                "POST /models/verify: the gateway answered something that is not JSON"
            ) from None

    def package(self, upload: PackageUpload, on_bytes: Callable[[int], None]) -> Json:
        """Streams the GGUF as the body (never whole in memory); `on_bytes` hears each chunk."""
        size = upload.gguf.stat().st_size
        chunk_bytes = self._settings.upload_chunk_bytes

        def body() -> Iterator[bytes]:
            with upload.gguf.open("rb") as gguf:
                while chunk := gguf.read(chunk_bytes):
                    yield chunk
                    on_bytes(len(chunk))

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if upload.license:
            headers[_LICENSE_HEADER] = base64.b64encode(upload.license).decode("ascii")
        if upload.chat_template:
            headers[_CHAT_TEMPLATE_HEADER] = base64.b64encode(upload.chat_template).decode("ascii")
        params = {"tag": upload.tag, "filename": upload.gguf.name}
        if upload.context_size:
            params["context_size"] = str(upload.context_size)
        with self._stream(
            "POST", "/models/package", params=params, headers=headers, content=body()
        ) as response:
            response.read()
        try:
            return response.json()
        except ValueError:
            raise CliError("package: the gateway answered something that is not JSON") from None

    # -- engines -------------------------------------------------------------------------------

    def engines_status(self) -> Json:
        return self._json("GET", "/engines/status")

    def running(self) -> list[Json]:
        rows = self._json("GET", "/engines/ps")
        return list(rows) if isinstance(rows, list) else []

    def disk_usage(self) -> Json:
        return self._json("GET", "/engines/df")

    def workers(self) -> list[Json]:
        rows = self._json("GET", "/engines/workers")
        return list(rows) if isinstance(rows, list) else []

    def unload(self, models: Sequence[str], *, unload_all: bool) -> Json:
        body = {"all": unload_all, "models": list(models)}
        return self._json("POST", "/engines/unload", json=body)

    def configure(self, body: dict[str, Json]) -> None:
        self._call("POST", "/engines/_configure", json=body)

    def configurations(self) -> list[Json]:
        entries = self._json("GET", "/engines/_configure")
        return list(entries) if isinstance(entries, list) else []

    def version(self) -> str | None:
        """The gateway's version; None when it has no /version route."""
        try:
            answer = self._json("GET", "/version")
        except NotFoundError:
            return None
        return str(answer.get("version")) if isinstance(answer, dict) else None

    # -- inference -----------------------------------------------------------------------------

    def preload(self, model: str) -> None:
        """Load the model without running inference (DMR's `X-Preload-Only`)."""
        body = {"model": model, "messages": [{"role": "user", "content": ""}]}
        with self._stream("POST", CHAT_PATH, json=body, headers={_PRELOAD_HEADER: "true"}) as r:
            r.read()

    def stream_completion(
        self, body: dict[str, Json], path: str = CHAT_PATH
    ) -> Generator[ChatChunk, None, None]:
        """Chunks of a streamed chat/completions answer; an error event raises StreamError."""
        with self._stream("POST", path, json={**body, "stream": True}) as response:
            lines = response.iter_lines()
            for data in iter_sse_data(lines):
                try:
                    chunk = parse_chat_chunk(data)
                except ValueError:
                    raise StreamError(
                        f"unexpected stream event from the gateway: {data[:80]!r}"
                    ) from None
                if chunk.error is not None:
                    raise StreamError(chunk.error)
                yield chunk
            # Read to the end after `[DONE]`: closing earlier looks like a client that left,
            # and the gateway then cancels a request that had already finished.
            for _ in lines:
                pass
