"""Issue 4 on real parts: two workers with real llama-servers (2 slots, 1024 tokens each), a real
registry, scheduler and gateway. The tests share one cluster and run in file order; each uses its
own model so that what an earlier test left loaded only matters where the test says so.

Each worker's memory budget fits one SmolLM2 runner and not two, so a second model on a worker
means evicting the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelrunner.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.common.grpc_client import open_channel
from services.registry.gguf_metadata import read_gguf_info
from services.scheduler.memory import estimate_memory
from services.worker.config import WorkerSettings
from tests.integration.scheduler.conftest import Cluster, WorkerPlan
from tests.support.processes import wait_until

pytestmark = pytest.mark.timeout(600)

CONTEXT = 1024
SLOTS = 2
PROMPT_CACHE_MIB = 64
GGUF_MEDIA_TYPE = "application/vnd.docker.ai.gguf.v3"
TAGGED = "ai/smollm2-tagged"
EVICTOR = "ai/smollm2-evictor"
HUGE = "ai/smollm2-huge"
SHARED = "ai/smollm2"
ENV = {
    "SCHEDULER_DEFAULT_PARALLEL": str(SLOTS),
    "SCHEDULER_DEFAULT_CONTEXT_SIZE": str(CONTEXT),
    "SCHEDULER_PROMPT_CACHE_MIB": str(PROMPT_CACHE_MIB),
    "SCHEDULER_SCALE_UP_QUEUE": "1",
    "SCHEDULER_SCALE_UP_AFTER": "0.5s",
    "SCHEDULER_AUTOSCALE_INTERVAL": "0.2s",
    "MODEL_KEEP_ALIVE": "10m",
    # Two llama-servers share two cores.
    "WORKER_LLAMA_THREADS": "1",
}

ClusterFactory = Callable[[Sequence[WorkerPlan], Mapping[str, str]], Awaitable[Cluster]]


def _runner_budget(gguf: Path) -> int:
    """1.5 runners' worth of the scheduler's own estimate: one fits on a worker, two do not."""
    model = common_pb2.Model(
        config=common_pb2.ModelConfig(format="gguf", gguf=dict(read_gguf_info(gguf).metadata)),
        layers=[common_pb2.Descriptor(media_type=GGUF_MEDIA_TYPE, size=gguf.stat().st_size)],
    )
    estimate = estimate_memory(
        model, context_size=CONTEXT, parallel=SLOTS, prompt_cache_bytes=PROMPT_CACHE_MIB << 20
    )
    return int(estimate.total_bytes * 1.5)


@pytest.fixture(scope="module")
async def cluster(cluster_factory: ClusterFactory, gguf_path: Path) -> AsyncIterator[Cluster]:
    budget = _runner_budget(gguf_path)
    plans = [
        WorkerPlan("w1", {"zone": "a"}, budget),
        WorkerPlan("w2", {"zone": "b"}, budget),
    ]
    running = await cluster_factory(plans, ENV)
    await running.package(gguf_path, SHARED, context_size=CONTEXT)
    await running.package(gguf_path, TAGGED, context_size=CONTEXT + 1)
    await running.package(gguf_path, EVICTOR, context_size=CONTEXT + 2)
    await running.package(gguf_path, HUGE, context_size=CONTEXT + 3)
    yield running


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.gateway_url, timeout=120.0) as http:
        yield http


def _chat(model: str, text: str, *, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 7,
        **extra,
    }


async def _ps(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/engines/ps")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


async def _placed(client: httpx.AsyncClient, model: str) -> set[str]:
    """Workers with a READY runner of `model`."""
    return {
        row["worker_id"]
        for row in await _ps(client)
        if row["model_name"] in (model, f"{model}:latest") and row["state"] == "ready"
    }


async def _configure(client: httpx.AsyncClient, model: str, **config: Any) -> None:
    response = await client.post("/engines/_configure", json={"model": model, **config})
    assert response.status_code == 202, response.text


async def test_workers_report_their_runner_limit(cluster: Cluster) -> None:
    """WORKER_MAX_RUNNERS (default 4) reaches the scheduler, which places within it."""
    async with open_channel(cluster.scheduler_address) as channel:
        reply = await scheduler_pb2_grpc.SchedulerStub(channel).ListWorkers(
            scheduler_pb2.ListWorkersRequest(), timeout=10.0
        )
    limits = {status.worker.worker_id: status.worker.max_runners for status in reply.workers}
    assert limits == {"w1": WorkerSettings().max_runners, "w2": WorkerSettings().max_runners}


async def test_placement_follows_required_tags(client: httpx.AsyncClient) -> None:
    await _configure(client, TAGGED, **{"required-tags": {"zone": "b"}})
    response = await client.post("/engines/v1/chat/completions", json=_chat(TAGGED, "Hi"))
    assert response.status_code == 200, response.text
    assert await _placed(client, TAGGED) == {"w2"}


async def test_refusals_say_why(client: httpx.AsyncClient) -> None:
    no_tag = await client.post(
        "/engines/v1/chat/completions",
        json=_chat(SHARED, "Hi"),
        headers={"X-Worker-Tags": "zone=nowhere"},
    )
    assert no_tag.status_code == 503, no_tag.text
    assert "zone" in no_tag.json()["error"]["message"]

    await _configure(client, HUGE, **{"context-size": 1_000_000})
    too_big = await client.post("/engines/v1/chat/completions", json=_chat(HUGE, "Hi"))
    assert too_big.status_code == 507, too_big.text
    message = too_big.json()["error"]["message"]
    assert "GiB" in message or "MiB" in message
    # Nothing was started for it.
    assert await _placed(client, HUGE) == set()


async def test_eviction_makes_room_on_the_only_fitting_worker(client: httpx.AsyncClient) -> None:
    assert await _placed(client, TAGGED) == {"w2"}
    await _configure(client, EVICTOR, **{"required-tags": {"zone": "b"}})
    response = await client.post("/engines/v1/chat/completions", json=_chat(EVICTOR, "Hi"))
    assert response.status_code == 200, response.text
    assert await _placed(client, EVICTOR) == {"w2"}
    assert await _placed(client, TAGGED) == set()


async def test_idle_unload_after_keep_alive(client: httpx.AsyncClient) -> None:
    await _configure(client, EVICTOR, keep_alive="1s", **{"required-tags": {"zone": "b"}})
    response = await client.post("/engines/v1/chat/completions", json=_chat(EVICTOR, "Hi"))
    assert response.status_code == 200, response.text

    async def unloaded() -> bool:
        return await _placed(client, EVICTOR) == set()

    await wait_until(unloaded, what="the idle runner to be unloaded", timeout=15.0)


async def _stream_chat(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
    first_byte: asyncio.Event | None = None,
) -> tuple[int, str, list[dict[str, Any]]]:
    """(status, worker id header, events); an `error` event is kept as {"error": ...}."""
    events: list[dict[str, Any]] = []
    async with client.stream(
        "POST",
        "/engines/v1/chat/completions",
        json={**body, "stream": True},
        headers=dict(headers or {}),
    ) as response:
        worker = response.headers.get("x-worker-id", "")
        if response.status_code != 200:
            await response.aread()
            return response.status_code, worker, [response.json()]
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events.append(orjson.loads(line[6:]))
            if first_byte is not None:
                first_byte.set()
    return response.status_code, worker, events


async def test_replicas_scale_up_under_load(client: httpx.AsyncClient) -> None:
    await _configure(client, SHARED, **{"max-replicas": 2})
    body = _chat(SHARED, "Write a long story about a lighthouse.", max_tokens=160)
    results = await asyncio.gather(*(_stream_chat(client, body) for _ in range(8)))
    assert all(status == 200 for status, _, _ in results), results
    assert all(not any("error" in e for e in events) for _, _, events in results)
    assert await _placed(client, SHARED) == {"w1", "w2"}
    # Both replicas served some of the burst.
    assert {worker for _, worker, _ in results} == {"w1", "w2"}


def _conversation(system: str, turns: int) -> list[list[dict[str, str]]]:
    """The message lists of a multi-turn chat: each turn resends the whole history."""
    history = [{"role": "system", "content": system}]
    lists = []
    for turn in range(turns):
        history = [*history, {"role": "user", "content": f"Question {turn}: name a colour."}]
        lists.append(history)
        history = [*history, {"role": "assistant", "content": f"Colour number {turn}."}]
    return lists


async def test_conversations_stick_to_a_replica_while_load_spreads(
    client: httpx.AsyncClient,
) -> None:
    assert await _placed(client, SHARED) == {"w1", "w2"}
    conversations = [
        _conversation("You are a helpful assistant who likes the sea. " * 8, 4),
        _conversation("You are a terse assistant who likes mountains. " * 8, 4),
    ]
    seen: list[list[str]] = [[], []]
    cached: list[list[int]] = [[], []]
    for turn in range(4):
        for index, turns in enumerate(conversations):
            response = await client.post(
                "/engines/v1/chat/completions",
                json={"model": SHARED, "messages": turns[turn], "max_tokens": 4, "temperature": 0},
            )
            assert response.status_code == 200, response.text
            seen[index].append(response.headers["x-worker-id"])
            cached[index].append(int(response.json().get("timings", {}).get("cache_n", 0)))
    for workers in seen:
        assert len(set(workers)) == 1, seen
    # Load spread: the two conversations live on different replicas.
    assert seen[0][0] != seen[1][0], seen
    # llama.cpp reused the shared prefix on every later turn.
    for counts in cached:
        assert all(count > 0 for count in counts[1:]), cached


@pytest.mark.replaces_module_process
async def test_scheduler_restart_does_not_interrupt_serving(
    client: httpx.AsyncClient, cluster: Cluster
) -> None:
    started = asyncio.Event()
    body = _chat(SHARED, "Count slowly from one to fifty.", max_tokens=120)
    stream = asyncio.create_task(_stream_chat(client, body, first_byte=started))
    await asyncio.wait_for(started.wait(), 60.0)
    await cluster.restart_scheduler()
    status, _, events = await stream
    assert status == 200
    assert not any("error" in event for event in events)

    async def readopted() -> bool:
        return await _placed(client, SHARED) == {"w1", "w2"}

    await wait_until(readopted, what="workers to re-register their runners", timeout=30.0)
    configs = (await client.get("/engines/_configure")).json()
    assert {entry["Model"] for entry in configs} >= {
        f"{model}:latest" for model in (SHARED, TAGGED, EVICTOR)
    }
    response = await client.post("/engines/v1/chat/completions", json=_chat(SHARED, "Hi"))
    assert response.status_code == 200, response.text
    assert (
        "adopting runner" in cluster.scheduler.log_tail()
        or "adopting runner" in (cluster.root / "logs" / "scheduler.log").read_text()
    )


async def test_failover_when_a_worker_is_killed(
    client: httpx.AsyncClient, cluster: Cluster
) -> None:
    assert await _placed(client, SHARED) == {"w1", "w2"}
    # Different prompts: the same one would follow its prefix to one replica.
    topics = ("ships", "trains")
    first = [asyncio.Event(), asyncio.Event()]
    streams = [
        asyncio.create_task(
            _stream_chat(
                client,
                _chat(SHARED, f"Tell me everything about the history of {topic}.", max_tokens=400),
                first_byte=first[i],
            )
        )
        for i, topic in enumerate(topics)
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first)), 60.0)
    cluster.kill_worker("w1")
    # Requests sent right after the kill, before the scheduler has noticed, still succeed.
    after = await asyncio.gather(
        *(client.post("/engines/v1/chat/completions", json=_chat(SHARED, "Hi")) for _ in range(3))
    )
    assert [r.status_code for r in after] == [200, 200, 200], [r.text for r in after]
    assert {r.headers["x-worker-id"] for r in after} == {"w2"}
    results = await asyncio.wait_for(asyncio.gather(*streams), 120.0)
    by_worker = {worker: events for _, worker, events in results}
    assert set(by_worker) == {"w1", "w2"}
    # The stream on the killed worker ended with a clean error event; the other finished.
    assert "error" in by_worker["w1"][-1]
    assert not any("error" in event for event in by_worker["w2"])

    async def gone() -> bool:
        return await _placed(client, SHARED) == {"w2"}

    await wait_until(gone, what="the dead worker's replica to disappear", timeout=15.0)
