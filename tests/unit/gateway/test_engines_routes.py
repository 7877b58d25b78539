"""The /engines operator routes: status, ps, df, workers and _configure, against fake neighbours."""

from __future__ import annotations

import dataclasses

import grpc
import httpx
import pytest

from modelrunner.v1 import common_pb2, registry_pb2, scheduler_pb2
from services.gateway.config import GatewaySettings
from services.gateway.models_view import go_duration
from tests.support.processes import free_port
from tests.unit.gateway.conftest import Neighbours, asgi_client
from tests.unit.gateway.fakes import MODEL_ID
from tests.unit.gateway.test_inference import error_of


def worker(
    worker_id: str,
    *,
    alive: bool = True,
    cache_bytes: int = 0,
    tags: dict[str, str] | None = None,
) -> scheduler_pb2.WorkerStatus:
    return scheduler_pb2.WorkerStatus(
        worker=scheduler_pb2.WorkerInfo(
            worker_id=worker_id,
            address=f"{worker_id}:50053",
            tags=tags or {"accelerator": "cpu"},
            memory_total_bytes=16 << 30,
            memory_free_bytes=10 << 30,
            cache_bytes=cache_bytes,
        ),
        alive=alive,
        last_seen_ms=1_700_000_000_500,
        memory_reserved_bytes=2 << 30,
        runners=1,
    )


# --- /engines/status ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "status"),
    [
        (
            [worker("w1"), worker("w2"), worker("w3", alive=False)],
            "Running: llama.cpp on 2 workers",
        ),
        ([worker("w1")], "Running: llama.cpp on 1 worker"),
        ([], "Error: no workers registered"),
        (
            [worker("w1", alive=False)],
            "Error: no workers alive (1 registered, none heartbeating)",
        ),
    ],
)
async def test_status_counts_live_workers(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    workers: list[scheduler_pb2.WorkerStatus],
    status: str,
) -> None:
    neighbours.scheduler.workers = workers

    response = await client.get("/engines/status")

    assert response.status_code == 200
    assert response.json() == {"llama.cpp": status}


async def test_status_with_the_scheduler_down_is_an_error_status(
    settings: GatewaySettings,
) -> None:
    down = f"127.0.0.1:{free_port()}"
    async with asgi_client(dataclasses.replace(settings, scheduler_address=down)) as client:
        response = await client.get("/engines/status")

    assert response.status_code == 200
    assert response.json()["llama.cpp"].startswith("Error: scheduler unavailable")


# --- /engines/ps ----------------------------------------------------------------------------


async def test_ps_rows_say_where_and_how_each_replica_runs(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.placements = [
        scheduler_pb2.Placement(
            worker_id="worker-1",
            worker_address="10.0.0.2:50053",
            runner=common_pb2.RunnerInfo(
                model_id=MODEL_ID,
                reference="ai/smollm2:latest",
                state=common_pb2.RUNNER_STATE_READY,
                in_flight=1,
                memory_bytes=123_456_789,
                context_size=4096,
                parallel=2,
            ),
            in_flight=1,
            queued=3,
            last_used_ms=1_700_000_000_000,
            expires_ms=1_700_000_300_000,
            worker_tags={"zone": "a", "accelerator": "cpu"},
        ),
        scheduler_pb2.Placement(
            worker_id="worker-2",
            worker_address="10.0.0.3:50053",
            runner=common_pb2.RunnerInfo(
                model_id=MODEL_ID,
                reference="ai/smollm2:latest",
                state=common_pb2.RUNNER_STATE_STARTING,
            ),
        ),
    ]

    response = await client.get("/engines/ps")

    assert response.status_code == 200
    assert response.json() == [
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/smollm2:latest",
            "mode": "completion",
            "in_use": True,
            "loading": False,
            "last_used": "2023-11-14T22:13:20.000Z",
            "keep_alive": "5m0s",
            "worker_id": "worker-1",
            "worker_address": "10.0.0.2:50053",
            "worker_tags": {"accelerator": "cpu", "zone": "a"},
            "model_id": MODEL_ID,
            "state": "ready",
            "in_flight": 1,
            "queued": 3,
            "memory_bytes": 123_456_789,
            "parallel": 2,
            "context_size": 4096,
            "expires_at": "2023-11-14T22:18:20.000Z",
        },
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/smollm2:latest",
            "mode": "completion",
            "in_use": False,
            "loading": True,
            "keep_alive": "-1",
            "worker_id": "worker-2",
            "worker_address": "10.0.0.3:50053",
            "worker_tags": {},
            "model_id": MODEL_ID,
            "state": "starting",
            "in_flight": 0,
            "queued": 0,
            "memory_bytes": 0,
            "parallel": 0,
            "context_size": 0,
            "expires_at": None,
        },
    ]


# --- /engines/df ----------------------------------------------------------------------------


async def test_df_adds_the_store_and_the_worker_caches(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.disk = registry_pb2.DiskUsageResponse(
        blobs_bytes=1_000_000, incomplete_bytes=2_345
    )
    neighbours.scheduler.workers = [
        worker("w1", cache_bytes=98_000_000),
        worker("w2", cache_bytes=7, alive=False),
    ]

    response = await client.get("/engines/df")

    assert response.status_code == 200
    assert response.json() == {
        "models_disk_usage": 1_002_345,
        "default_backend_disk_usage": 98_000_007,
        "workers": [
            {"worker_id": "w1", "address": "w1:50053", "cache_bytes": 98_000_000},
            {"worker_id": "w2", "address": "w2:50053", "cache_bytes": 7},
        ],
    }


@pytest.mark.parametrize("down", ["registry", "scheduler"])
async def test_df_names_the_unreachable_service(settings: GatewaySettings, down: str) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    if down == "registry":
        settings = dataclasses.replace(settings, registry_address=nowhere)
    else:
        settings = dataclasses.replace(settings, scheduler_address=nowhere)
    async with asgi_client(settings) as client:
        response = await client.get("/engines/df")

    assert response.status_code == 503
    assert str(error_of(response)["message"]).startswith(f"{down} unavailable")


async def test_df_passes_other_failures_through(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.registry.disk_failure = (grpc.StatusCode.INTERNAL, "cannot stat the store")

    response = await client.get("/engines/df")

    assert response.status_code == 502
    assert error_of(response)["message"] == "cannot stat the store"


# --- /engines/workers -----------------------------------------------------------------------


async def test_workers_view(client: httpx.AsyncClient, neighbours: Neighbours) -> None:
    neighbours.scheduler.workers = [
        worker("w1", cache_bytes=5, tags={"zone": "b", "accelerator": "cuda"}),
        scheduler_pb2.WorkerStatus(worker=scheduler_pb2.WorkerInfo(worker_id="w2")),
    ]

    response = await client.get("/engines/workers")

    assert response.status_code == 200
    assert response.json() == [
        {
            "worker_id": "w1",
            "address": "w1:50053",
            "alive": True,
            "draining": False,
            "tags": {"accelerator": "cuda", "zone": "b"},
            "memory_total_bytes": 16 << 30,
            "memory_free_bytes": 10 << 30,
            "memory_reserved_bytes": 2 << 30,
            "cache_bytes": 5,
            "runners": 1,
            "last_seen": 1_700_000_000,
        },
        {
            "worker_id": "w2",
            "address": "",
            "alive": False,
            "draining": False,
            "tags": {},
            "memory_total_bytes": 0,
            "memory_free_bytes": 0,
            "memory_reserved_bytes": 0,
            "cache_bytes": 0,
            "runners": 0,
            "last_seen": None,
        },
    ]


async def test_workers_view_maps_scheduler_errors(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    neighbours.scheduler.workers_error = (grpc.StatusCode.UNIMPLEMENTED, "old scheduler")

    response = await client.get("/engines/workers")

    assert response.status_code == 501
    assert error_of(response)["message"] == "old scheduler"


# --- /engines/_configure --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/engines/_configure", "/engines/llama.cpp/_configure"])
async def test_configure_sends_the_config_and_answers_the_stored_entry(
    client: httpx.AsyncClient, neighbours: Neighbours, path: str
) -> None:
    body = {
        "model": "smollm2",
        "mode": "completion",
        "context-size": 2048,
        "runtime-flags": ["--temp", "0.5", "--top-k", "20"],
        "keep_alive": "1h30m",
        "required-tags": {"accelerator": "cuda", "zone": "a"},
        "min-replicas": 1,
        "max-replicas": 3,
        "parallel": 4,
    }

    response = await client.post(path, json=body)

    assert response.status_code == 202
    expected = {
        "Backend": "llama.cpp",
        "Model": "ai/smollm2:latest",
        "ModelID": MODEL_ID,
        "Mode": "completion",
        "Config": {
            "context-size": 2048,
            "runtime-flags": ["--temp", "0.5", "--top-k", "20"],
            "keep_alive": "1h30m0s",
            "required-tags": {"accelerator": "cuda", "zone": "a"},
            "min-replicas": 1,
            "max-replicas": 3,
            "parallel": 4,
        },
    }
    assert response.json() == expected
    [request] = neighbours.scheduler.configure_requests
    assert request.model == "smollm2"
    config = request.config
    assert config.context_size == 2048
    assert list(config.llama_args) == ["--temp", "0.5", "--top-k", "20"]
    assert config.HasField("keep_alive_seconds")
    assert config.keep_alive_seconds == 5400
    assert dict(config.required_tags) == {"accelerator": "cuda", "zone": "a"}
    assert (config.min_replicas, config.max_replicas, config.parallel) == (1, 3, 4)

    listing = await client.get("/engines/_configure")
    assert listing.status_code == 200
    assert listing.json() == [expected]


async def test_configure_minimal_body_leaves_everything_unset(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.post("/engines/_configure", json={"model": "ai/smollm2"})

    assert response.status_code == 202
    assert response.json()["Config"] == {}
    [request] = neighbours.scheduler.configure_requests
    assert not request.config.HasField("keep_alive_seconds")
    assert request.config == common_pb2.ModelRuntimeConfig()


@pytest.mark.parametrize(
    ("given", "seconds", "shown"),
    [
        ("5m", 300.0, "5m0s"),
        ("0", 0.0, "0s"),
        ("-1", -1.0, "-1"),
        ("-10m", -1.0, "-1"),
        ("250ms", 0.25, "250ms"),
        (90, 90.0, "1m30s"),
        (1.5, 1.5, "1.5s"),
        (-1, -1.0, "-1"),
    ],
)
async def test_configure_keep_alive_forms(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    given: object,
    seconds: float,
    shown: str,
) -> None:
    response = await client.post(
        "/engines/_configure", json={"model": "ai/smollm2", "keep_alive": given}
    )

    assert response.status_code == 202
    assert neighbours.scheduler.configure_requests[0].config.keep_alive_seconds == seconds
    assert response.json()["Config"]["keep_alive"] == shown


@pytest.mark.parametrize("size", [-1, 0])
async def test_configure_unlimited_or_zero_context_is_the_default(
    client: httpx.AsyncClient, neighbours: Neighbours, size: int
) -> None:
    response = await client.post(
        "/engines/_configure", json={"model": "ai/smollm2", "context-size": size}
    )

    assert response.status_code == 202
    assert neighbours.scheduler.configure_requests[0].config.context_size == 0
    assert "context-size" not in response.json()["Config"]


async def test_configure_raw_flags_are_shell_split(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.post(
        "/engines/_configure",
        json={
            "model": "ai/smollm2",
            "raw-runtime-flags": "--temp 0.7  --chat-template-kwargs '{\"a\": 1}'",
        },
    )

    assert response.status_code == 202
    assert list(neighbours.scheduler.configure_requests[0].config.llama_args) == [
        "--temp",
        "0.7",
        "--chat-template-kwargs",
        '{"a": 1}',
    ]


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"model": "m", "ctx": 1, "flags": []}, "ctx", "unknown keys: ctx, flags"),
        ({"context-size": 10}, "model", "model is required"),
        ({"model": ""}, "model", "model is required"),
        ({"model": "m", "context-size": "big"}, "context-size", "must be an integer"),
        ({"model": "m", "context-size": True}, "context-size", "must be an integer"),
        ({"model": "m", "context-size": -2}, "context-size", "between -1 and"),
        ({"model": "m", "context-size": 2**31}, "context-size", "between -1 and"),
        ({"model": "m", "parallel": -1}, "parallel", "between 0 and"),
        ({"model": "m", "min-replicas": 1.5}, "min-replicas", "must be an integer"),
        (
            {"model": "m", "min-replicas": 3, "max-replicas": 2},
            "max-replicas",
            "below min-replicas",
        ),
        ({"model": "m", "runtime-flags": "--temp 1"}, "runtime-flags", "list of strings"),
        ({"model": "m", "runtime-flags": ["--temp", 1]}, "runtime-flags", "list of strings"),
        ({"model": "m", "raw-runtime-flags": "--x 'open"}, "raw-runtime-flags", "cannot be split"),
        ({"model": "m", "raw-runtime-flags": 5}, "raw-runtime-flags", "must be a string"),
        (
            {"model": "m", "runtime-flags": ["--temp", "1"], "raw-runtime-flags": "--temp 1"},
            "raw-runtime-flags",
            "not both",
        ),
        ({"model": "m", "keep_alive": "soon"}, "keep_alive", "invalid duration"),
        ({"model": "m", "keep_alive": True}, "keep_alive", "duration"),
        ({"model": "m", "keep_alive": ["5m"]}, "keep_alive", "duration"),
        ({"model": "m", "required-tags": ["gpu"]}, "required-tags", "object"),
        ({"model": "m", "required-tags": {"gpu": 1}}, "required-tags", "object"),
        ({"model": "m", "required-tags": {"gpu": ""}}, "required-tags", "non-empty"),
        ({"model": "m", "required-tags": {"": "x"}}, "required-tags", "empty tag name"),
        ({"model": "m", "mode": "reranking"}, "mode", "completion or embedding"),
        ({"model": "m", "speculative": {"draft_model": "d"}}, "speculative", "not supported"),
    ],
)
async def test_configure_bad_bodies_are_400_naming_the_key(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    body: dict[str, object],
    param: str,
    needle: str,
) -> None:
    response = await client.post("/engines/_configure", json=body)

    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param
    assert needle in str(error["message"])
    assert not neighbours.scheduler.configure_requests


@pytest.mark.parametrize("body", [b"[1, 2]", b"{oops", b""])
async def test_configure_non_object_bodies_are_400(
    client: httpx.AsyncClient, neighbours: Neighbours, body: bytes
) -> None:
    response = await client.post("/engines/_configure", content=body)

    assert response.status_code == 400
    error_of(response)
    assert not neighbours.scheduler.configure_requests


async def test_configure_on_another_backend_is_404(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    response = await client.post("/engines/vllm/_configure", json={"model": "ai/smollm2"})

    assert response.status_code == 404
    error = error_of(response)
    assert error["message"] == "backend not found: vllm"
    assert not neighbours.scheduler.configure_requests


@pytest.mark.parametrize(
    ("code", "details", "status"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "runner already active: 1 request in flight", 409),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "flag --model is not allowed: not on the allowlist",
            400,
        ),
        (grpc.StatusCode.NOT_FOUND, "model ai/nope not found", 404),
        (grpc.StatusCode.UNAVAILABLE, "connection reset", 503),
    ],
)
async def test_configure_scheduler_refusals_map_to_http(
    client: httpx.AsyncClient,
    neighbours: Neighbours,
    code: grpc.StatusCode,
    details: str,
    status: int,
) -> None:
    neighbours.scheduler.configure_errors.append((code, details))

    response = await client.post("/engines/_configure", json={"model": "ai/smollm2"})

    assert response.status_code == status
    # The scheduler's explanation reaches the client as it wrote it.
    assert details in str(error_of(response)["message"])


async def test_configure_listing_filters_by_model(
    client: httpx.AsyncClient, neighbours: Neighbours
) -> None:
    for model, size in (("ai/smollm2", 1024), ("ai/qwen3", 4096)):
        response = await client.post(
            "/engines/_configure", json={"model": model, "context-size": size}
        )
        assert response.status_code == 202

    everything = await client.get("/engines/_configure")
    one = await client.get("/engines/_configure", params={"model": "ai/qwen3"})

    assert [entry["Model"] for entry in everything.json()] == [
        "ai/qwen3:latest",
        "ai/smollm2:latest",
    ]
    assert [(e["Model"], e["Config"]) for e in one.json()] == [
        ("ai/qwen3:latest", {"context-size": 4096})
    ]
    assert neighbours.scheduler.config_queries == ["", "ai/qwen3"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        # Go's time.Duration.String() for the same durations.
        (0, "0s"),
        (1e-9, "1ns"),
        (1.5e-6, "1.5\u00b5s"),
        (0.001, "1ms"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (59, "59s"),
        (300, "5m0s"),
        (299.999, "4m59.999s"),
        (3600, "1h0m0s"),
        (5400, "1h30m0s"),
        (172_801, "48h0m1s"),
        (-2, "-2s"),
    ],
)
def test_go_duration_matches_go(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
