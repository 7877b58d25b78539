"""The Worker gRPC service on 127.0.0.1:0, with the stand-in llama-server and a fake scheduler."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from modelrunner.v1 import common_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.grpc_server import GrpcServer
from services.worker.artifact import ModelSpec
from services.worker.blob_cache import BlobCache, FetchLimits
from services.worker.leases import LeaseReleaser
from services.worker.metrics import MetricsLimits, MetricsScraper
from services.worker.pool import RunnerPool
from services.worker.server import SERVICE_NAME, WorkerServicer
from tests.unit.worker.fake_registry import FakeRegistry, running_registry
from tests.unit.worker.fake_scheduler import FakeScheduler, serve_scheduler
from tests.unit.worker.support import FakeBlobs, eventually, make_pool

GOOD = b"GGUF fake model\n"
CHAT = common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS


def model_proto(spec: ModelSpec) -> common_pb2.Model:
    return common_pb2.Model(
        id=spec.model_id,
        layers=[
            common_pb2.Descriptor(media_type=layer.media_type, digest=layer.digest, size=layer.size)
            for layer in spec.layers
        ],
    )


_GOOD_MODEL = common_pb2.Model(
    id="sha256:" + "c" * 64,
    layers=[
        common_pb2.Descriptor(
            media_type="application/vnd.docker.ai.gguf.v3", digest="sha256:" + "d" * 64, size=1
        )
    ],
)


def chat_body(text: str, *, stream: bool = True, **fake: int) -> bytes:
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    }
    if fake:
        body["fake"] = fake
    return json.dumps(body).encode()


@dataclass
class Worker:
    stub: worker_pb2_grpc.WorkerAsyncStub
    scheduler: FakeScheduler
    pool: RunnerPool
    blobs: FakeBlobs

    async def load(self, content: bytes = GOOD) -> ModelSpec:
        spec = self.blobs.model(content)
        await self.stub.Load(
            worker_pb2.LoadRequest(model=model_proto(spec), reference="ai/fake"), timeout=10
        )
        return spec

    async def generate(
        self, spec: ModelSpec, body: bytes, *, stream: bool = True, lease: str = "lease-1"
    ) -> list[worker_pb2.GenerateResponse]:
        call = self.stub.Generate(
            worker_pb2.GenerateRequest(
                request_id="req-1",
                model_id=spec.model_id,
                endpoint=CHAT,
                stream=stream,
                lease_id=lease,
                body=body,
            ),
            timeout=10,
        )
        return [message async for message in call]


async def start_worker(
    pool: RunnerPool, blobs: FakeBlobs
) -> tuple[GrpcServer, grpc.aio.Server, grpc.aio.Channel, grpc.aio.Channel, Worker]:
    scheduler = FakeScheduler()
    scheduler_server, scheduler_address = await serve_scheduler(scheduler)
    scheduler_channel = open_channel(scheduler_address)
    server = GrpcServer("127.0.0.1:0", [SERVICE_NAME])
    releaser = LeaseReleaser(scheduler_pb2_grpc.SchedulerStub(scheduler_channel), timeout=2.0)
    scraper = MetricsScraper(pool, MetricsLimits(timeout=2.0, max_bytes=64 * 1024))
    worker_pb2_grpc.add_WorkerServicer_to_server(
        WorkerServicer(pool, releaser, scraper), server.server
    )
    port = await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    worker = Worker(worker_pb2_grpc.WorkerStub(channel), scheduler, pool, blobs)
    return server, scheduler_server, scheduler_channel, channel, worker


@pytest.fixture
async def worker(fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs) -> AsyncIterator[Worker]:
    pool = make_pool(fake_binary, runtime_dir, blobs, stream_idle_timeout=0.5)
    server, scheduler_server, scheduler_channel, channel, running = await start_worker(pool, blobs)
    try:
        yield running
    finally:
        await channel.close()
        await server.stop(grace=1.0)
        await pool.close()
        await scheduler_channel.close()
        await scheduler_server.stop(None)


def split(responses: list[worker_pb2.GenerateResponse]) -> tuple[worker_pb2.ResponseHead, bytes]:
    assert responses and responses[0].WhichOneof("part") == "head"
    assert all(r.WhichOneof("part") == "chunk" for r in responses[1:])
    return responses[0].head, b"".join(r.chunk for r in responses[1:])


async def test_load_then_stream_a_chat_completion(worker: Worker) -> None:
    spec = await worker.load()
    responses = await worker.generate(spec, chat_body("hello from the test"))
    head, body = split(responses)
    assert (head.status_code, head.content_type) == (200, "text/event-stream")
    words = ["hello", " from", " the", " test"]
    expected = b"".join(
        b"data: " + json.dumps({"choices": [{"delta": {"content": w}}]}).encode() + b"\n\n"
        for w in words
    )
    assert body == expected + b"data: [DONE]\n\n"
    # Released before the stream finished: already recorded when the client sees the end.
    assert [(r.lease_id, r.runner_failed) for r in worker.scheduler.releases] == [
        ("lease-1", False)
    ]
    assert worker.pool.snapshot()[0].in_flight == 0


async def test_non_streamed_answer_and_error_status_pass_through(worker: Worker) -> None:
    spec = await worker.load()
    head, body = split(
        await worker.generate(spec, chat_body("one two", stream=False), stream=False)
    )
    assert (head.status_code, head.content_type) == (200, "application/json")
    assert json.loads(body)["choices"][0]["message"]["content"] == "one two"

    head, body = split(await worker.generate(spec, b"{not json", stream=False))
    assert head.status_code == 400
    assert b"invalid JSON" in body
    assert len(worker.scheduler.releases) == 2


async def test_embeddings_endpoint(worker: Worker) -> None:
    spec = await worker.load()
    call = worker.stub.Generate(
        worker_pb2.GenerateRequest(
            model_id=spec.model_id,
            endpoint=common_pb2.ENDPOINT_KIND_EMBEDDINGS,
            body=b'{"input": "hi"}',
        ),
        timeout=10,
    )
    head, body = split([message async for message in call])
    assert head.status_code == 200
    assert json.loads(body)["data"][0]["embedding"] == [0.1, 0.2, 0.3]
    assert worker.scheduler.releases == []  # no lease id: a direct call


async def test_generate_for_a_model_not_loaded_is_unavailable(worker: Worker) -> None:
    spec = worker.blobs.model(GOOD)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await worker.generate(spec, chat_body("hi"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not loaded" in (caught.value.details() or "")
    assert [(r.lease_id, r.runner_failed) for r in worker.scheduler.releases] == [
        ("lease-1", False)
    ]


async def test_endpoint_is_required(worker: Worker) -> None:
    spec = await worker.load()
    call = worker.stub.Generate(
        worker_pb2.GenerateRequest(model_id=spec.model_id, lease_id="l", body=b"{}"), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [message async for message in call]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(worker.scheduler.releases) == 1


async def test_llama_server_dying_mid_stream(worker: Worker) -> None:
    spec = await worker.load()
    received: list[worker_pb2.GenerateResponse] = []
    call = worker.stub.Generate(
        worker_pb2.GenerateRequest(
            model_id=spec.model_id,
            endpoint=CHAT,
            stream=True,
            lease_id="lease-crash",
            body=chat_body("a b c d e", crash_after=2),
        ),
        timeout=10,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "broke off" in (caught.value.details() or "")
    head, body = split(received)
    # aiohttp raises the broken connection before handing over bytes it had already buffered,
    # so the last events before a crash may be lost; what does arrive is an exact prefix.
    assert head.status_code == 200 and body.count(b"data: ") <= 2
    expected = b"".join(
        b"data: " + json.dumps({"choices": [{"delta": {"content": word}}]}).encode() + b"\n\n"
        for word in ("a", " b")
    )
    assert expected.startswith(body)
    assert [(r.lease_id, r.runner_failed) for r in worker.scheduler.releases] == [
        ("lease-crash", True)
    ]
    listed = await worker.stub.ListRunners(worker_pb2.ListRunnersRequest(), timeout=5)

    async def state() -> int:
        return (await worker.stub.ListRunners(worker_pb2.ListRunnersRequest())).runners[0].state

    await eventually(
        lambda: worker.pool.snapshot()[0].error != "", what="the runner to be marked FAILED"
    )
    assert await state() == common_pb2.RUNNER_STATE_FAILED
    assert listed.runners[0].model_id == spec.model_id
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await worker.generate(spec, chat_body("hi"))
    assert again.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_llama_server_stalling_mid_stream(worker: Worker) -> None:
    spec = await worker.load()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await worker.generate(spec, chat_body("a b c", stall_after=1))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stopped sending" in (caught.value.details() or "")
    # Slow is not dead: the scheduler may keep routing to it.
    assert [r.runner_failed for r in worker.scheduler.releases] == [False]


async def test_client_cancel_releases_the_lease_and_the_runner(worker: Worker) -> None:
    spec = await worker.load()
    call = worker.stub.Generate(
        worker_pb2.GenerateRequest(
            model_id=spec.model_id,
            endpoint=CHAT,
            stream=True,
            lease_id="lease-cancel",
            body=chat_body("a b c", stall_after=1),
        ),
        timeout=10,
    )
    first = await call.read()
    assert first.WhichOneof("part") == "head"
    await eventually(lambda: worker.pool.snapshot()[0].in_flight == 1, what="the request")
    call.cancel()
    await eventually(lambda: len(worker.scheduler.releases) == 1, what="the release")
    assert worker.scheduler.releases[0].lease_id == "lease-cancel"
    await eventually(lambda: worker.pool.snapshot()[0].in_flight == 0, what="the lease to end")


async def test_load_failure_carries_llama_servers_reason(worker: Worker) -> None:
    spec = worker.blobs.model(b"CRASH llama_model_load: error loading model: tensor 'x' is bad\n")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await worker.stub.Load(
            worker_pb2.LoadRequest(model=model_proto(spec), reference="ai/bad"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details() or ""
    assert "ai/bad" in details and "tensor 'x' is bad" in details
    [runner] = (await worker.stub.ListRunners(worker_pb2.ListRunnersRequest())).runners
    assert runner.state == common_pb2.RUNNER_STATE_FAILED
    assert "tensor 'x' is bad" in runner.error


@pytest.mark.parametrize(
    "request_",
    [
        worker_pb2.LoadRequest(),
        worker_pb2.LoadRequest(model=common_pb2.Model(id="sha256:" + "a" * 64)),
        worker_pb2.LoadRequest(
            model=common_pb2.Model(
                id="not-a-digest",
                layers=[
                    common_pb2.Descriptor(
                        media_type="application/vnd.docker.ai.gguf.v3",
                        digest="sha256:" + "b" * 64,
                        size=1,
                    )
                ],
            )
        ),
        worker_pb2.LoadRequest(model=_GOOD_MODEL, parallel=-1),
        worker_pb2.LoadRequest(model=_GOOD_MODEL, memory_estimate_bytes=-1),
        worker_pb2.LoadRequest(model=_GOOD_MODEL, llama_args=["--temp", "1", "-c", "64"]),
    ],
    ids=[
        "no-model",
        "no-gguf-layer",
        "bad-model-id",
        "negative-parallel",
        "negative-estimate",
        "reserved-llama-arg",
    ],
)
async def test_invalid_load_requests(worker: Worker, request_: worker_pb2.LoadRequest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await worker.stub.Load(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await worker.stub.ListRunners(worker_pb2.ListRunnersRequest())).runners


async def test_load_options_are_reported(worker: Worker) -> None:
    spec = worker.blobs.model(GOOD)
    loaded = await worker.stub.Load(
        worker_pb2.LoadRequest(
            model=model_proto(spec),
            reference="ai/fake",
            context_size=512,
            parallel=2,
            memory_estimate_bytes=123_456,
        ),
        timeout=10,
    )
    runner = loaded.runner
    assert (runner.context_size, runner.parallel, runner.memory_bytes) == (512, 2, 123_456)
    [listed] = (await worker.stub.ListRunners(worker_pb2.ListRunnersRequest())).runners
    assert (listed.context_size, listed.parallel, listed.memory_bytes) == (512, 2, 123_456)


async def test_unload_and_list(worker: Worker) -> None:
    spec = await worker.load()
    listed = await worker.stub.ListRunners(worker_pb2.ListRunnersRequest(), timeout=5)
    assert [(r.model_id, r.state, r.generation) for r in listed.runners] == [
        (spec.model_id, common_pb2.RUNNER_STATE_READY, 1)
    ]
    unload = worker_pb2.UnloadRequest(model_id=spec.model_id)
    assert (await worker.stub.Unload(unload, timeout=5)).unloaded is True
    assert (await worker.stub.Unload(unload, timeout=5)).unloaded is False
    assert not (await worker.stub.ListRunners(worker_pb2.ListRunnersRequest())).runners


async def test_scrape_metrics_returns_each_ready_runners_text(worker: Worker) -> None:
    empty = await worker.stub.ScrapeMetrics(worker_pb2.ScrapeMetricsRequest(), timeout=5)
    assert list(empty.runners) == []
    spec = await worker.load()
    await worker.generate(spec, chat_body("one two", stream=False), stream=False)
    reply = await worker.stub.ScrapeMetrics(worker_pb2.ScrapeMetricsRequest(), timeout=5)
    [runner] = reply.runners
    assert (runner.model_id, runner.reference) == (spec.model_id, "ai/fake")
    assert "# TYPE llamacpp:prompt_tokens_total counter\n" in runner.text
    assert "llamacpp:prompt_tokens_total 2\n" in runner.text


async def test_blob_fetch_failure_is_unavailable(
    fake_binary: Path, runtime_dir: Path, tmp_path: Path, blobs: FakeBlobs
) -> None:
    spec = blobs.model(GOOD)  # known to the test, not to the registry
    async with running_registry(FakeRegistry()) as registry:
        cache = BlobCache(tmp_path / "cache", registry, FetchLimits(5.0, 10.0))
        pool = make_pool(fake_binary, runtime_dir, cache)
        server, scheduler_server, scheduler_channel, channel, worker = await start_worker(
            pool, blobs
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await worker.stub.Load(worker_pb2.LoadRequest(model=model_proto(spec)), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "NOT_FOUND" in (caught.value.details() or "")
        finally:
            await channel.close()
            await server.stop(grace=1.0)
            await pool.close()
            await cache.close()
            await scheduler_channel.close()
            await scheduler_server.stop(None)


async def test_a_runner_exiting_between_requests_is_reported_failed(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs
) -> None:
    pool = make_pool(fake_binary, runtime_dir, blobs, llama_args=("--fake-exit-after", "1"))
    server, scheduler_server, scheduler_channel, channel, worker = await start_worker(pool, blobs)
    try:
        spec = await worker.load()
        head, _ = split(await worker.generate(spec, chat_body("only one")))
        assert head.status_code == 200
        await eventually(
            lambda: "exiting after 1 requests" in pool.snapshot()[0].error,
            what="the exit to be reported with llama-server's last words",
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await worker.generate(spec, chat_body("second"), lease="lease-2")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "FAILED" in (caught.value.details() or "")
    finally:
        await channel.close()
        await server.stop(grace=1.0)
        await pool.close()
        await scheduler_channel.close()
        await scheduler_server.stop(None)


@pytest.mark.parametrize(("dropped", "served"), [(2, True), (3, False)])
async def test_connections_closed_unread_are_resent_a_bounded_number_of_times(
    fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs, dropped: int, served: bool
) -> None:
    pool = make_pool(
        fake_binary, runtime_dir, blobs, llama_args=("--fake-drop-requests", str(dropped))
    )
    server, scheduler_server, scheduler_channel, channel, worker = await start_worker(pool, blobs)
    try:
        spec = await worker.load()
        if served:
            head, body = split(await worker.generate(spec, chat_body("resent")))
            assert head.status_code == 200 and b"resent" in body
        else:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await worker.generate(spec, chat_body("lost"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "without sending a response" in (caught.value.details() or "")
    finally:
        await channel.close()
        await server.stop(grace=1.0)
        await pool.close()
        await scheduler_channel.close()
        await scheduler_server.stop(None)
