"""The worker with the real llama-server and the real SmolLM2 GGUF, fetched from a registry.

The registry and scheduler are in-process fakes (the worker's neighbours); everything from the
Worker gRPC API down to llama-server is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from modelrunner.v1 import common_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc
from services.common.digest import sha256_file
from services.common.grpc_client import open_channel
from services.common.grpc_server import GrpcServer
from services.worker.artifact import GGUF_MEDIA_TYPE
from services.worker.binary import resolve_llama_server
from services.worker.blob_cache import BlobCache, FetchLimits
from services.worker.errors import BinaryNotFoundError
from services.worker.leases import LeaseReleaser
from services.worker.llama_client import ClientLimits
from services.worker.llama_engine import LlamaEngineSettings, LlamaServerEngine, RunnerTimeouts
from services.worker.metrics import MetricsLimits, MetricsScraper
from services.worker.pool import PoolSettings, RunnerPool
from services.worker.runner import RunnerState
from services.worker.server import SERVICE_NAME, WorkerServicer
from tests.unit.worker.fake_registry import FakeRegistry, running_registry
from tests.unit.worker.fake_scheduler import FakeScheduler, serve_scheduler
from tests.unit.worker.support import eventually

pytestmark = pytest.mark.integration

MODEL_ID = "sha256:" + "5" * 64  # the manifest digest; the worker only uses it as a key


@dataclass(frozen=True)
class Blob:
    digest: str
    data: bytes


@pytest.fixture(scope="session")
def llama_server() -> Path:
    try:
        return resolve_llama_server(None)
    except BinaryNotFoundError as exc:
        pytest.skip(f"llama-server is not built yet: {exc}")


@pytest.fixture(scope="session")
def gguf_blob(gguf_path: Path) -> Blob:
    return Blob(digest=sha256_file(gguf_path), data=gguf_path.read_bytes())


@pytest.fixture(scope="session")
def blob_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared, so the 98 MB blob crosses the fake registry once per session."""
    return tmp_path_factory.mktemp("worker-blob-cache")


@dataclass
class Worker:
    stub: worker_pb2_grpc.WorkerAsyncStub
    scheduler: FakeScheduler
    pool: RunnerPool
    model: common_pb2.Model
    runtime_dir: Path


@pytest.fixture
async def worker(
    llama_server: Path, gguf_blob: Blob, blob_cache_dir: Path
) -> AsyncIterator[Worker]:
    runtime_dir = Path(tempfile.mkdtemp(prefix="mrw-", dir="/tmp"))
    registry = FakeRegistry(chunk_size=1 << 20, blobs={gguf_blob.digest: gguf_blob.data})
    scheduler = FakeScheduler()
    scheduler_server, scheduler_address = await serve_scheduler(scheduler)
    scheduler_channel = open_channel(scheduler_address)
    async with running_registry(registry) as registry_stub:
        cache = BlobCache(blob_cache_dir, registry_stub, FetchLimits(30.0, 300.0))
        engine = LlamaServerEngine(
            LlamaEngineSettings(
                binary=llama_server,
                runtime_dir=runtime_dir,
                name_prefix=str(os.getpid()),
                # One thread: llama.cpp's spinning thread barriers collapse when the 2 cores are
                # shared with other processes (a 24-token answer then takes tens of seconds).
                llama_args=("--threads", "1"),
                runner_timeouts=RunnerTimeouts(
                    ready_timeout=120.0,
                    health_poll_interval=0.1,
                    stop_timeout=10.0,
                    log_max_bytes=1 << 20,
                ),
                client_limits=ClientLimits(
                    connect_timeout=2.0,
                    stream_idle_timeout=60.0,
                    request_timeout=120.0,
                    max_connections=8,
                ),
            ),
            cache,
        )
        pool = RunnerPool(PoolSettings(max_runners=2, drain_timeout=5.0), engine)
        server = GrpcServer("127.0.0.1:0", [SERVICE_NAME])
        releaser = LeaseReleaser(scheduler_pb2_grpc.SchedulerStub(scheduler_channel), 2.0)
        scraper = MetricsScraper(pool, MetricsLimits(timeout=5.0, max_bytes=1024 * 1024))
        worker_pb2_grpc.add_WorkerServicer_to_server(
            WorkerServicer(pool, releaser, scraper), server.server
        )
        port = await server.start()
        channel = open_channel(f"127.0.0.1:{port}")
        model = common_pb2.Model(
            id=MODEL_ID,
            config=common_pb2.ModelConfig(format="gguf", context_size=2048),
            layers=[
                common_pb2.Descriptor(
                    media_type=GGUF_MEDIA_TYPE,
                    digest=gguf_blob.digest,
                    size=len(gguf_blob.data),
                )
            ],
        )
        try:
            yield Worker(worker_pb2_grpc.WorkerStub(channel), scheduler, pool, model, runtime_dir)
        finally:
            await channel.close()
            await server.stop(grace=2.0)
            await pool.close()
            await cache.close()
            await scheduler_channel.close()
            await scheduler_server.stop(None)
            shutil.rmtree(runtime_dir, ignore_errors=True)


async def load(worker: Worker) -> worker_pb2.LoadResponse:
    return await worker.stub.Load(
        worker_pb2.LoadRequest(model=worker.model, reference="ai/smollm2:latest"), timeout=180
    )


async def generate(
    worker: Worker, endpoint: common_pb2.EndpointKind.ValueType, body: dict[str, object]
) -> tuple[worker_pb2.ResponseHead, bytes]:
    call = worker.stub.Generate(
        worker_pb2.GenerateRequest(
            request_id="it",
            model_id=MODEL_ID,
            endpoint=endpoint,
            stream=bool(body.get("stream")),
            lease_id="lease-it",
            body=json.dumps(body).encode(),
        ),
        timeout=60,
    )
    messages = [message async for message in call]
    assert messages[0].WhichOneof("part") == "head"
    return messages[0].head, b"".join(message.chunk for message in messages[1:])


CHAT = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "stream": True,
    "temperature": 0,
    "seed": 42,
    "max_tokens": 24,
}


def sse_content(body: bytes) -> str:
    events = [line[len(b"data: ") :] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    return "".join(
        chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"]
    )


async def test_load_stream_chat_and_embeddings(worker: Worker) -> None:
    loaded = await load(worker)
    assert loaded.runner.state == common_pb2.RUNNER_STATE_READY
    assert loaded.runner.context_size == 2048

    head, body = await generate(worker, common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS, CHAT)
    assert (head.status_code, head.content_type) == (200, "text/event-stream")
    content = sse_content(body)
    assert content.strip()
    # temperature 0 and a seed reach llama-server unchanged: the same answer again.
    _, again = await generate(worker, common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS, CHAT)
    assert sse_content(again) == content

    head, body = await generate(
        worker, common_pb2.ENDPOINT_KIND_EMBEDDINGS, {"input": "hello world"}
    )
    assert head.status_code == 200
    vector = json.loads(body)["data"][0]["embedding"]
    assert len(vector) > 100 and all(isinstance(x, float) for x in vector)
    assert [r.runner_failed for r in worker.scheduler.releases] == [False, False, False]


async def test_killed_llama_server_fails_fast_and_a_new_load_serves(worker: Worker) -> None:
    first = await load(worker)
    [snapshot] = worker.pool.snapshot()
    assert snapshot.pid is not None
    os.kill(snapshot.pid, signal.SIGKILL)

    async def failed() -> bool:
        listed = await worker.stub.ListRunners(worker_pb2.ListRunnersRequest(), timeout=5)
        return listed.runners[0].state == common_pb2.RUNNER_STATE_FAILED

    await eventually(
        lambda: worker.pool.snapshot()[0].state is RunnerState.FAILED, what="FAILED", timeout=5
    )
    assert await failed()
    assert "exited unexpectedly" in worker.pool.snapshot()[0].error

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(worker, common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS, CHAT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 2.0

    second = await load(worker)
    assert second.runner.state == common_pb2.RUNNER_STATE_READY
    assert second.runner.generation > first.runner.generation
    head, body = await generate(worker, common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS, CHAT)
    assert head.status_code == 200 and sse_content(body).strip()
    await asyncio.sleep(0)


async def _get_json(socket_path: Path, path: str) -> object:
    async with aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(socket_path)),
        timeout=aiohttp.ClientTimeout(total=10),
    ) as session:
        async with session.get(f"http://llama-server{path}") as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def test_parallel_slots_each_get_the_context_size(worker: Worker) -> None:
    loaded = await worker.stub.Load(
        worker_pb2.LoadRequest(
            model=worker.model,
            reference="ai/smollm2:latest",
            context_size=1024,
            parallel=2,
            llama_args=["--temp", "0.3"],
            memory_estimate_bytes=500 * 1024**2,
        ),
        timeout=180,
    )
    runner = loaded.runner
    assert (runner.context_size, runner.parallel) == (1024, 2)
    assert runner.memory_bytes == 500 * 1024**2
    [socket_path] = worker.runtime_dir.glob("*.sock")
    props = await _get_json(socket_path, "/props")
    assert isinstance(props, dict)
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 1024
    slots = await _get_json(socket_path, "/slots")
    assert isinstance(slots, list)
    assert [slot["n_ctx"] for slot in slots] == [1024, 1024]
    # The model's own arguments reached llama-server, after LLAMA_ARGS.
    assert props["default_generation_settings"]["params"]["temperature"] == pytest.approx(0.3)
