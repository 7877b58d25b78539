"""The /engines operator routes and the routing hints through the real stack: gateway ->
scheduler (ConfigureModel, ListModelConfigs, ListWorkers) and registry (DiskUsage), with a real
worker, llama-server and SmolLM2. Tests run in file order on one stack: the configuration the
second test stores is the one later tests load with, and the last one leaves the model unfit."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from services.stack.launcher import LocalStack
from tests.integration.conftest import StackFactory
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

CHAT = "/engines/llama.cpp/v1/chat/completions"
MODEL = "ai/smollm2"
REFERENCE = "ai/smollm2:latest"
ZONE = "engines-it"
CONTEXT = 1024


@pytest.fixture(scope="module")
async def stack(
    stack_factory: StackFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    state = tmp_path_factory.mktemp("scheduler-state") / "model-configs.json"
    env = {"SCHEDULER_STATE_PATH": str(state), "WORKER_TAGS": f"zone={ZONE}"}
    async with stack_factory(env) as running:
        yield running


@pytest.fixture
async def http(stack: LocalStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=180) as client:
        yield client


def _chat(max_tokens: int = 8, **extra: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a long story about a dragon."},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 42,
        **extra,
    }


async def test_status_and_workers_show_the_live_worker(http: httpx.AsyncClient) -> None:
    status = await http.get("/engines/status")
    workers = await http.get("/engines/workers")

    assert status.status_code == 200
    assert status.json() == {"llama.cpp": "Running: llama.cpp on 1 worker"}
    assert workers.status_code == 200
    [worker] = workers.json()
    assert worker["alive"] is True
    assert worker["draining"] is False
    assert worker["tags"]["zone"] == ZONE
    assert worker["memory_total_bytes"] > 0
    assert abs(worker["last_seen"] - time.time()) < 60


async def test_configure_is_stored_and_used_by_the_next_load(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/engines/_configure",
        json={
            "model": "smollm2",
            "context-size": CONTEXT,
            "keep_alive": "10m",
            "raw-runtime-flags": "--top-k 20",
            "required-tags": {"zone": ZONE},
        },
    )

    assert response.status_code == 202, response.text
    entry = response.json()
    assert entry["Backend"] == "llama.cpp"
    assert entry["Model"] == REFERENCE
    assert entry["ModelID"].startswith("sha256:")
    assert entry["Config"] == {
        "context-size": CONTEXT,
        "runtime-flags": ["--top-k", "20"],
        "keep_alive": "10m0s",
        "required-tags": {"zone": ZONE},
    }
    listed = await http.get("/engines/_configure", params={"model": MODEL})
    assert listed.status_code == 200
    assert listed.json() == [entry]

    headers = {"X-Session-ID": "it-session", "X-Priority": "5", "X-Worker-Tags": f"zone={ZONE}"}
    chat = await http.post(CHAT, json=_chat(), headers=headers)
    assert chat.status_code == 200, chat.text

    [row] = (await http.get("/engines/ps")).json()
    assert row["model_name"] == REFERENCE
    assert row["state"] == "ready"
    assert row["context_size"] == CONTEXT
    assert row["keep_alive"] == "10m0s"
    assert row["worker_tags"]["zone"] == ZONE
    assert row["memory_bytes"] > 0
    assert row["parallel"] >= 1
    assert row["in_flight"] == 0


@pytest.fixture
def gguf_size(gguf_path: Path) -> int:
    return gguf_path.stat().st_size


async def test_df_counts_the_store_and_the_worker_cache(
    http: httpx.AsyncClient, gguf_size: int
) -> None:
    size = gguf_size

    async def cache_reported() -> bool:
        usage = (await http.get("/engines/df")).json()
        return bool(usage["default_backend_disk_usage"] >= size)

    # The worker reports its cache with its heartbeats.
    await wait_until(cache_reported, timeout=30, what="the worker's cache in /engines/df")
    usage = (await http.get("/engines/df")).json()
    assert usage["models_disk_usage"] >= size
    [worker] = usage["workers"]
    assert worker["cache_bytes"] == usage["default_backend_disk_usage"]


async def test_a_flag_off_the_allowlist_is_400_with_the_schedulers_reason(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/engines/_configure", json={"model": MODEL, "runtime-flags": ["--no-such-flag"]}
    )

    assert response.status_code == 400
    assert "--no-such-flag" in response.json()["error"]["message"]


async def test_configure_errors_from_the_gateway_and_the_scheduler(
    http: httpx.AsyncClient,
) -> None:
    unknown_model = await http.post("/engines/_configure", json={"model": "ai/no-such-model"})
    unknown_key = await http.post("/engines/_configure", json={"model": MODEL, "ctx": 1})
    unknown_backend = await http.post("/engines/vllm/_configure", json={"model": MODEL})

    assert unknown_model.status_code == 404, unknown_model.text
    assert unknown_key.status_code == 400
    assert "unknown keys: ctx" in unknown_key.json()["error"]["message"]
    assert unknown_backend.status_code == 404
    assert unknown_backend.json()["error"]["message"] == "backend not found: vllm"


async def test_configuring_a_busy_model_is_409(http: httpx.AsyncClient) -> None:
    body = _chat(max_tokens=400, stream=True, ignore_eos=True)
    async with http.stream("POST", CHAT, json=body) as stream:
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        async for line in lines:
            if line.startswith("data: ") and "choices" in line:
                break
        # A request is in flight on the only runner of the model.
        busy = await http.post("/engines/_configure", json={"model": MODEL, "context-size": 512})
        async for _ in lines:
            pass

    assert busy.status_code == 409, busy.text
    [entry] = (await http.get("/engines/_configure", params={"model": MODEL})).json()
    assert entry["Config"]["context-size"] == CONTEXT


async def test_tags_no_worker_has_are_refused_not_hung(http: httpx.AsyncClient) -> None:
    response = await http.post(CHAT, json=_chat(), headers={"X-Worker-Tags": "zone=nowhere"})

    assert response.status_code == 503, response.text
    assert "zone=nowhere" in response.json()["error"]["message"]


async def test_a_model_that_fits_nowhere_is_507(http: httpx.AsyncClient) -> None:
    # About 23 KB of KV cache per token for SmolLM2: a million tokens in 256 slots fits no
    # machine. The scheduler may refuse it when configured or when asked to load it.
    configure = await http.post(
        "/engines/_configure",
        json={"model": MODEL, "context-size": 1 << 20, "parallel": 256},
    )
    if configure.status_code == 202:
        response = await http.post(CHAT, json=_chat())
    else:
        response = configure

    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["type"] == "insufficient_storage"
    assert error["message"]
    assert orjson.loads(response.content)["error"]["code"] == 507
