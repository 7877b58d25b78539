"""GatewayClient against a fake gateway: requests it sends and how failures are mapped."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_cli.client import GatewayClient, PackageUpload
from model_cli.config import CliSettings
from model_cli.errors import (
    ApiError,
    CliError,
    ConflictError,
    ConnectionLost,
    GatewayTimeout,
    GatewayUnreachable,
    NotFoundError,
    StreamError,
)
from tests.unit.cli.conftest import HOST, FakeGateway, delta, ndjson, sse


def client(gateway: FakeGateway) -> GatewayClient:
    return GatewayClient(CliSettings(host=HOST), transport=gateway.transport())


class Stream(httpx.SyncByteStream):
    """A response body delivered in parts; remembers how much the client read, may fail."""

    def __init__(self, parts: list[bytes], fail: Exception | None = None) -> None:
        self.parts = parts
        self.fail = fail
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            self.read += 1
            yield part
        if self.fail is not None:
            raise self.fail


@pytest.mark.parametrize(
    ("status", "kind"),
    [(404, NotFoundError), (409, ConflictError), (400, ApiError), (503, ApiError)],
)
def test_http_errors_carry_the_gateway_message(
    gateway: FakeGateway, status: int, kind: type[ApiError]
) -> None:
    gateway.error("GET", "/models/ai/x", status, f"refused with {status}")
    with client(gateway) as api, pytest.raises(kind) as caught:
        api.inspect("ai/x")
    assert caught.value.message == f"refused with {status}"
    assert caught.value.status == status


def test_unreachable_gateway(gateway: FakeGateway) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    gateway.route("GET", "/models", refuse)
    with client(gateway) as api, pytest.raises(GatewayUnreachable) as caught:
        api.list_models()
    assert caught.value.message == (
        f"cannot reach Model Runner at {HOST}: start it with `make run` (or set MODEL_RUNNER_HOST)"
    )


def test_a_silent_gateway_times_out_naming_the_setting(gateway: FakeGateway) -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    gateway.route("GET", "/engines/ps", stall)
    with client(gateway) as api, pytest.raises(GatewayTimeout, match=r"60s \(MODEL_CLI_TIMEOUT\)"):
        api.running()


def test_a_connection_cut_mid_stream(gateway: FakeGateway) -> None:
    body = Stream([sse(delta("Hel"))], fail=httpx.RemoteProtocolError("peer closed"))
    gateway.route(
        "POST", "/engines/v1/chat/completions", lambda _: httpx.Response(200, stream=body)
    )
    received = []
    with client(gateway) as api, pytest.raises(ConnectionLost, match="was lost"):
        for chunk in api.stream_completion({"model": "m", "messages": []}):
            received.append(chunk.content)
    assert received == ["Hel"]


def test_an_error_event_mid_stream(gateway: FakeGateway) -> None:
    body = sse(delta("a"), {"error": {"message": "worker failed: llama-server exited"}})
    gateway.route(
        "POST", "/engines/v1/chat/completions", lambda _: httpx.Response(200, content=body)
    )
    with client(gateway) as api, pytest.raises(StreamError, match="llama-server exited"):
        list(api.stream_completion({"model": "m", "messages": []}))


def test_a_finished_stream_is_read_to_its_end(gateway: FakeGateway) -> None:
    """Closing right after [DONE] would look like a client that left mid-answer."""
    body = Stream([sse(delta("a")), sse("[DONE]"), b": trailing\n\n", b""])
    gateway.route(
        "POST", "/engines/v1/chat/completions", lambda _: httpx.Response(200, stream=body)
    )
    with client(gateway) as api:
        chunks = list(api.stream_completion({"model": "m", "messages": [], "stream": False}))
    assert [c.content for c in chunks] == ["a"]
    assert body.read == len(body.parts)
    sent = json.loads(gateway.requests[0].content)
    assert sent["stream"] is True


def test_pull_streams_progress_and_asks_for_json(gateway: FakeGateway) -> None:
    lines = ndjson(
        {"type": "progress", "total": 4, "layer": {"id": "sha256:aa", "size": 4, "current": 4}},
        {"type": "success", "message": "Model pulled successfully"},
    )
    gateway.route("POST", "/models/create", lambda _: httpx.Response(200, content=lines))
    with client(gateway) as api:
        events = list(api.pull("localhost:5000/team/m:v1", bearer_token="tok"))
    assert [e.type for e in events] == ["progress", "success"]
    (request,) = gateway.requests
    assert request.headers["accept"] == "application/json"
    assert json.loads(request.content) == {
        "from": "localhost:5000/team/m:v1",
        "bearer-token": "tok",
    }


def test_garbage_in_a_progress_stream(gateway: FakeGateway) -> None:
    gateway.route("POST", "/models/ai/m/push", lambda _: httpx.Response(200, content=b"<html>\n"))
    with client(gateway) as api, pytest.raises(StreamError, match="unexpected progress line"):
        list(api.push("ai/m"))


def test_model_names_keep_their_slashes_and_tags(gateway: FakeGateway) -> None:
    gateway.json("POST", "/models/localhost:5000/a/b:v1/tag", {"message": "ok"}, 201)
    gateway.json("DELETE", "/models/ai/m:v1", [{"Untagged": "ai/m:v1"}])
    with client(gateway) as api:
        api.tag("localhost:5000/a/b:v1", "ai/c", "v2")
        assert api.remove("ai/m:v1", force=True) == [{"Untagged": "ai/m:v1"}]
    tag, remove = gateway.requests
    assert dict(tag.url.params) == {"repo": "ai/c", "tag": "v2"}
    assert dict(remove.url.params) == {"force": "true"}


def test_engine_calls_send_dmr_bodies(gateway: FakeGateway) -> None:
    gateway.json("POST", "/engines/unload", {"unloaded_runners": 2})
    gateway.route("POST", "/engines/_configure", lambda _: httpx.Response(202))
    gateway.json("GET", "/version", {"version": "1.2.3"})
    with client(gateway) as api:
        assert api.unload(["ai/a"], unload_all=False) == {"unloaded_runners": 2}
        api.configure({"model": "ai/a", "context-size": 512})
        assert api.version() == "1.2.3"
    unload, configure, _ = gateway.requests
    assert json.loads(unload.content) == {"all": False, "models": ["ai/a"]}
    assert json.loads(configure.content) == {"model": "ai/a", "context-size": 512}


def test_version_is_none_without_the_route(gateway: FakeGateway) -> None:
    with client(gateway) as api:
        assert api.version() is None


def test_preload_sends_dmr_header(gateway: FakeGateway) -> None:
    gateway.route("POST", "/engines/v1/chat/completions", lambda _: httpx.Response(200))
    with client(gateway) as api:
        api.preload("ai/m")
    (request,) = gateway.requests
    assert request.headers["x-preload-only"] == "true"
    assert json.loads(request.content)["model"] == "ai/m"


def test_package_streams_the_file_and_sends_texts_as_headers(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    gateway.json("POST", "/models/package", {"id": "sha256:" + "c" * 64, "tags": ["me/m:v1"]}, 201)
    seen: list[int] = []
    settings = CliSettings(host=HOST, upload_chunk_bytes=1000)
    with GatewayClient(settings, transport=gateway.transport()) as api:
        model = api.package(
            PackageUpload(
                gguf, "me/m:v1", context_size=4096, license=b"MIT", chat_template=b"{{x}}"
            ),
            seen.append,
        )
    assert model["tags"] == ["me/m:v1"]
    assert seen == [1000, 1000, 564]
    (request,) = gateway.requests
    assert request.content == gguf.read_bytes()
    assert request.headers["content-length"] == str(gguf.stat().st_size)
    assert request.headers["content-type"] == "application/octet-stream"
    assert base64.b64decode(request.headers["x-model-license"]) == b"MIT"
    assert base64.b64decode(request.headers["x-model-chat-template"]) == b"{{x}}"
    assert dict(request.url.params) == {
        "tag": "me/m:v1",
        "filename": "model.gguf",
        "context_size": "4096",
    }


def test_non_json_answers_are_failures(gateway: FakeGateway) -> None:
    gateway.route("GET", "/models", lambda _: httpx.Response(200, content=b"<html>"))
    with client(gateway) as api, pytest.raises(CliError, match="not JSON"):
        api.list_models()


def test_api_key_is_sent_as_bearer_and_kept_out_of_repr() -> None:
    gateway = FakeGateway()
    gateway.json("GET", "/models", [])
    settings = CliSettings.from_env({"MODEL_RUNNER_HOST": HOST, "MODEL_RUNNER_API_KEY": "sk-abc"})
    with GatewayClient(settings, transport=gateway.transport()) as api:
        api.list_models()
    (request,) = gateway.sent("GET", "/models")
    assert request.headers["Authorization"] == "Bearer sk-abc"
    assert "sk-abc" not in repr(settings)

    without = FakeGateway()
    without.json("GET", "/models", [])
    with GatewayClient(CliSettings(host=HOST), transport=without.transport()) as api:
        api.list_models()
    assert "Authorization" not in without.sent("GET", "/models")[0].headers
