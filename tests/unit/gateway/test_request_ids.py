"""The gateway's request id (request_ids.py): taken from X-Request-ID or made up, sent back once on
every kind of answer, carried on the gRPC calls made for the request, and in its log lines."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import orjson
import pytest

from modelrunner.v1 import scheduler_pb2, scheduler_pb2_grpc, worker_pb2
from services.common.env import SettingError
from services.common.logs import log_handler
from services.common.request_id import REQUEST_ID_KEY
from services.gateway.config import GatewaySettings
from services.gateway.request_ids import incoming_request_id
from tests.unit.gateway.conftest import Neighbours, asgi_client
from tests.unit.gateway.fakes import FakeScheduler, chunk, fail, head

CHAT = "/engines/llama.cpp/v1/chat/completions"
BODY = b'{"model": "ai/smollm2", "messages": []}'
STREAM_BODY = b'{"model": "ai/smollm2", "stream": true, "messages": []}'


def ids_of(response: httpx.Response) -> list[str]:
    return response.headers.get_list("x-request-id")


def is_generated(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class RecordingScheduler(FakeScheduler):
    """The fake scheduler, plus the request id each Assign arrived with."""

    def __init__(self, worker_address: str) -> None:
        super().__init__(worker_address=worker_address)
        self.assign_ids: list[str | None] = []

    async def Assign(
        self, request: scheduler_pb2.AssignRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.AssignResponse:
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get(REQUEST_ID_KEY)
        self.assign_ids.append(value if isinstance(value, str) else None)
        return await super().Assign(request, context)


@pytest.fixture
async def recording(neighbours: Neighbours) -> AsyncIterator[tuple[RecordingScheduler, str]]:
    scheduler = RecordingScheduler(neighbours.worker_address)
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(scheduler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield scheduler, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def record_worker_ids(neighbours: Neighbours, seen: list[str | None], *chunks: bytes) -> None:
    """The next Generate records the request id it arrived with, then answers `chunks`."""

    async def script(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        value = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
        seen.append(value if isinstance(value, str) else None)
        yield head(200, "text/event-stream" if len(chunks) > 1 else "application/json")
        for data in chunks:
            yield chunk(data)

    neighbours.worker.scripts.append(script)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"client-id-1", True),
        (b"  padded  ", True),
        (b"has space", False),
        (b"x" * 129, False),
        (b"line\nbreak", False),
        (b"", False),
    ],
)
def test_a_clients_id_is_kept_only_when_safe_for_logs_and_headers(given: bytes, kept: bool) -> None:
    chosen = incoming_request_id({"type": "http", "headers": [(b"x-request-id", given)]})
    if kept:
        assert chosen == given.decode().strip()
    else:
        assert is_generated(chosen)


def test_each_request_without_an_id_gets_a_fresh_one() -> None:
    first = incoming_request_id({"type": "http", "headers": []})
    second = incoming_request_id({"type": "http", "headers": []})
    assert is_generated(first) and is_generated(second) and first != second


async def test_the_id_reaches_the_scheduler_and_the_worker_and_comes_back(
    settings: GatewaySettings,
    neighbours: Neighbours,
    recording: tuple[RecordingScheduler, str],
) -> None:
    scheduler, address = recording
    seen_by_worker: list[str | None] = []
    record_worker_ids(neighbours, seen_by_worker, b'{"object":"chat.completion"}')
    record_worker_ids(neighbours, seen_by_worker, b'{"object":"chat.completion"}')

    async with asgi_client(dataclasses.replace(settings, scheduler_address=address)) as client:
        given = await client.post(CHAT, content=BODY, headers={"X-Request-ID": "trace-42"})
        made_up = await client.post(CHAT, content=BODY, headers={"X-Request-ID": "bad id"})

    assert given.status_code == made_up.status_code == 200
    assert ids_of(given) == ["trace-42"]
    [generated] = ids_of(made_up)
    assert is_generated(generated)
    # The same id in the envelope, in the Assign's metadata and in the Generate's metadata.
    assert scheduler.assign_ids == ["trace-42", generated]
    assert seen_by_worker == ["trace-42", generated]
    assert [r.request_id for r in scheduler.assign_requests] == ["trace-42", generated]
    assert [r.request_id for r in neighbours.worker.requests] == ["trace-42", generated]


async def test_a_stream_carries_the_id_once(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    seen: list[str | None] = []
    record_worker_ids(neighbours, seen, b'data: {"choices":[]}\n\n', b"data: [DONE]\n\n")

    async with client.stream(
        "POST", CHAT, content=STREAM_BODY, headers={"X-Request-ID": "stream-7"}
    ) as response:
        body = await response.aread()

    assert response.status_code == 200
    assert ids_of(response) == ["stream-7"]
    assert seen == ["stream-7"]
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "status"),
    [
        ("GET", "/no/such/route", None, {}, 404),
        ("POST", CHAT, b"{not json", {}, 400),
        ("POST", CHAT, BODY, {"Origin": "http://evil.example"}, 403),
        ("GET", "/models/ai/unknown", None, {}, 404),
    ],
    ids=["unmatched", "invalid-body", "cors-refusal", "unknown-model"],
)
async def test_every_error_answer_carries_the_id_once(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    content: bytes | None,
    headers: dict[str, str],
    status: int,
) -> None:
    response = await client.request(
        method, path, content=content, headers={**headers, "X-Request-ID": "err-1"}
    )

    assert response.status_code == status
    assert ids_of(response) == ["err-1"]


@contextlib.contextmanager
def json_log_lines(logger_name: str) -> Iterator[io.StringIO]:
    """What `logger_name` writes while the block runs, as the services' JSON log lines."""
    stream = io.StringIO()
    handler = log_handler("gateway", "json", stream)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


async def test_the_gateways_log_lines_for_a_request_carry_its_id(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    # A failure after the streamed head is logged from the relay's task, not the route's.
    neighbours.worker.scripts.append(
        fail(grpc.StatusCode.INTERNAL, "engine crashed", head(200, "text/event-stream"))
    )

    with json_log_lines("services.gateway") as lines:
        response = await client.post(
            CHAT, content=STREAM_BODY, headers={"X-Request-ID": "logged-9"}
        )

    assert response.status_code == 200
    records = [orjson.loads(line) for line in lines.getvalue().splitlines()]
    failures = [r for r in records if "stream failed after the head" in r["message"]]
    assert failures and all(r["request_id"] == "logged-9" for r in failures)
    assert all(r["service"] == "gateway" for r in records)


@pytest.mark.parametrize(
    ("given", "expected"), [(None, "json"), ("text", "text"), ("JSON", "json")]
)
def test_the_log_format_is_a_setting(given: str | None, expected: str) -> None:
    env = {} if given is None else {"LOG_FORMAT": given}
    assert GatewaySettings.from_env(env).log_format == expected


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(SettingError, match="LOG_FORMAT"):
        GatewaySettings.from_env({"LOG_FORMAT": "xml"})
