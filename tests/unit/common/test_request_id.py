"""Request ids through real grpc.aio servers: `x-request-id` metadata -> the handler's context ->
its log lines and its outgoing calls, for every handler shape the services use."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from modelrunner.v1 import common_pb2, registry_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.grpc_server import GrpcServer
from services.common.logs import log_handler
from services.common.request_id import (
    REQUEST_ID_KEY,
    clean_request_id,
    current_request_id,
    detached_context,
    outgoing_metadata,
    request_id_client_interceptors,
    request_id_scope,
)

Context = grpc.aio.ServicerContext[Any, Any]
_LOGGER = "tests.request_id.front"


class Downstream(registry_pb2_grpc.RegistryServicer):
    """The service called on the request's behalf: records the id it was served under."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def InspectModel(
        self, request: registry_pb2.InspectModelRequest, context: Context
    ) -> common_pb2.Model:
        self.seen.append(current_request_id())
        if request.reference == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        return common_pb2.Model(id=request.reference)

    async def FetchBlob(
        self, request: registry_pb2.FetchBlobRequest, context: Context
    ) -> AsyncIterator[registry_pb2.BlobChunk]:
        # An async-generator handler, as the registry's Pull/Push/FetchBlob are.
        for _ in range(2):
            yield registry_pb2.BlobChunk(data=(current_request_id() or "-").encode())


class Front(worker_pb2_grpc.WorkerServicer):
    """Logs inside its handlers and calls Downstream, as the scheduler calls workers."""

    def __init__(self, downstream: registry_pb2_grpc.RegistryAsyncStub) -> None:
        self._downstream = downstream
        self._log = logging.getLogger(_LOGGER)

    async def Load(
        self, request: worker_pb2.LoadRequest, context: Context
    ) -> worker_pb2.LoadResponse:
        self._log.info("loading %s", request.reference)
        await self._downstream.InspectModel(
            registry_pb2.InspectModelRequest(reference=request.reference), timeout=5
        )
        return worker_pb2.LoadResponse(runner=common_pb2.RunnerInfo(model_id=request.reference))

    async def Generate(  # type: ignore[override]
        self, request: worker_pb2.GenerateRequest, context: Context
    ) -> None:
        # A coroutine writing its stream with context.write, as the worker's Generate does.
        await context.write(
            worker_pb2.GenerateResponse(chunk=(current_request_id() or "-").encode())
        )


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = log_handler("front", "json", stream)
    logger = logging.getLogger(_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = log_handler("front", "json", stream)
    logger = logging.getLogger("services.common.rpc")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@dataclass(frozen=True)
class Services:
    downstream: Downstream
    # To Front, which calls Downstream on the request's behalf.
    front: grpc.aio.Channel
    # Straight to Downstream.
    direct: grpc.aio.Channel


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    downstream = Downstream()
    down_server = GrpcServer("127.0.0.1:0", ["modelrunner.v1.Registry"])
    registry_pb2_grpc.add_RegistryServicer_to_server(downstream, down_server.server)
    down_port = await down_server.start()
    outgoing = open_channel(f"127.0.0.1:{down_port}", interceptors=request_id_client_interceptors())
    front_server = GrpcServer("127.0.0.1:0", ["modelrunner.v1.Worker"])
    worker_pb2_grpc.add_WorkerServicer_to_server(
        Front(registry_pb2_grpc.RegistryStub(outgoing)), front_server.server
    )
    front_port = await front_server.start()
    front = open_channel(f"127.0.0.1:{front_port}")
    direct = open_channel(f"127.0.0.1:{down_port}")
    try:
        yield Services(downstream, front, direct)
    finally:
        for channel in (front, direct, outgoing):
            await channel.close()
        await front_server.stop(0)
        await down_server.stop(0)


async def _load(client: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    await worker_pb2_grpc.WorkerStub(client).Load(
        worker_pb2.LoadRequest(reference="ai/smollm2"), metadata=metadata, timeout=5
    )


async def test_the_id_reaches_the_log_lines_and_the_outgoing_call(
    services: Services, log_lines: io.StringIO
) -> None:
    await _load(services.front, ((REQUEST_ID_KEY, "req-123"),))
    [line] = log_lines.getvalue().splitlines()
    record = json.loads(line)
    assert record["request_id"] == "req-123"
    assert record["message"] == "loading ai/smollm2"
    assert (record["service"], record["logger"], record["level"]) == ("front", _LOGGER, "INFO")
    assert services.downstream.seen == ["req-123"]


async def test_calls_without_an_id_see_none_and_nothing_leaks_between_calls(
    services: Services, log_lines: io.StringIO
) -> None:
    await _load(services.front, ((REQUEST_ID_KEY, "first"),))
    await _load(services.front)
    # Not an acceptable id (a space, which could forge log fields): treated as absent.
    await _load(services.front, ((REQUEST_ID_KEY, "two words"),))
    assert services.downstream.seen == ["first", None, None]
    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert [record.get("request_id") for record in records] == ["first", None, None]


async def test_calls_with_an_id_get_an_access_log_line(
    services: Services, access_lines: io.StringIO
) -> None:
    await _load(services.front, ((REQUEST_ID_KEY, "acc-1"),))
    await _load(services.front)
    with pytest.raises(grpc.aio.AioRpcError):
        await registry_pb2_grpc.RegistryStub(services.direct).InspectModel(
            registry_pb2.InspectModelRequest(reference="missing"),
            metadata=((REQUEST_ID_KEY, "acc-2"),),
            timeout=5,
        )
    records = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    # The call Front made on acc-1's behalf ends first, then Front's own; the call without an
    # id is not logged.
    assert [(r["request_id"], r["message"].split()[:2]) for r in records] == [
        ("acc-1", ["/modelrunner.v1.Registry/InspectModel", "OK"]),
        ("acc-1", ["/modelrunner.v1.Worker/Load", "OK"]),
        ("acc-2", ["/modelrunner.v1.Registry/InspectModel", "NOT_FOUND"]),
    ]
    assert all(r["message"].endswith(" ms") for r in records)


async def test_a_stream_written_with_context_write_runs_under_the_id(services: Services) -> None:
    call = worker_pb2_grpc.WorkerStub(services.front).Generate(
        worker_pb2.GenerateRequest(), metadata=((REQUEST_ID_KEY, "gen-1"),), timeout=5
    )
    assert [message.chunk async for message in call] == [b"gen-1"]


async def test_an_async_generator_handler_runs_under_the_id(services: Services) -> None:
    stub = registry_pb2_grpc.RegistryStub(services.direct)
    call = stub.FetchBlob(
        registry_pb2.FetchBlobRequest(digest="d"), metadata=((REQUEST_ID_KEY, "s-7"),), timeout=5
    )
    assert [chunk.data async for chunk in call] == [b"s-7", b"s-7"]
    call = stub.FetchBlob(registry_pb2.FetchBlobRequest(digest="d"), timeout=5)
    assert [chunk.data async for chunk in call] == [b"-", b"-"]


def test_outgoing_metadata_carries_the_current_id() -> None:
    assert outgoing_metadata() is None
    assert outgoing_metadata([("a", "1")]) == (("a", "1"),)
    with request_id_scope("abc"):
        assert current_request_id() == "abc"
        assert outgoing_metadata([("a", "1"), (REQUEST_ID_KEY, "stale")]) == (
            ("a", "1"),
            (REQUEST_ID_KEY, "abc"),
        )
    assert current_request_id() is None


async def test_tasks_inherit_the_id_unless_detached() -> None:
    async def seen() -> str | None:
        return current_request_id()

    with request_id_scope("req-5"):
        inherited = asyncio.create_task(seen())
        detached = asyncio.create_task(seen(), context=detached_context())
        assert await inherited == "req-5"
        assert await detached is None
        assert current_request_id() == "req-5"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("abc-123", "abc-123"),
        ("  padded  ", "padded"),
        (b"bytes-id", "bytes-id"),
        ("x" * 128, "x" * 128),
        ("x" * 129, None),
        ("", None),
        ("has space", None),
        ("line\nbreak", None),
        ("caf\u00e9", None),
        (None, None),
    ],
)
def test_clean_request_id(raw: str | bytes | None, expected: str | None) -> None:
    assert clean_request_id(raw) == expected
