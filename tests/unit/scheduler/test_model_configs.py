from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from modelrunner.v1 import common_pb2
from services.scheduler.errors import InvalidRequest, Unavailable
from services.scheduler.model_configs import (
    MAX_CONTEXT_SIZE,
    MAX_REQUIRED_TAGS,
    NEVER_UNLOAD,
    ConfigEntry,
    ConfigStore,
    ModelRuntimeConfig,
    config_from_proto,
    config_to_proto,
    effective_keep_alive,
)

FULL = ModelRuntimeConfig(
    context_size=8192,
    keep_alive=120.0,
    llama_args=("--threads", "4", "-fa", "on"),
    required_tags={"accelerator": "nvidia", "zone": "a"},
    min_replicas=1,
    max_replicas=3,
    parallel=2,
)


class WallClock:
    """The store reads the wall clock only to name a corrupt file."""

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self._wall = wall

    def monotonic(self) -> float:
        return 0.0

    def wall(self) -> float:
        return self._wall


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def entry(name: str, config: ModelRuntimeConfig = FULL) -> ConfigEntry:
    return ConfigEntry(
        model_id=f"sha256:{name * 64}"[:71], reference=f"ai/{name}:latest", config=config
    )


# --- validation -----------------------------------------------------------------------------


def test_valid_configs_pass() -> None:
    FULL.validate()
    ModelRuntimeConfig().validate()
    ModelRuntimeConfig(keep_alive=0).validate()
    ModelRuntimeConfig(keep_alive=NEVER_UNLOAD, min_replicas=5).validate()


INVALID = [
    pytest.param(ModelRuntimeConfig(context_size=-1), "context-size must be >= 0", id="neg ctx"),
    pytest.param(
        ModelRuntimeConfig(context_size=MAX_CONTEXT_SIZE + 1), "context-size", id="huge ctx"
    ),
    pytest.param(ModelRuntimeConfig(parallel=-2), "parallel must be >= 0", id="neg parallel"),
    pytest.param(ModelRuntimeConfig(parallel=257), "parallel must be at most", id="parallel"),
    pytest.param(ModelRuntimeConfig(min_replicas=-1), "min-replicas", id="neg min"),
    pytest.param(ModelRuntimeConfig(max_replicas=-1), "max-replicas", id="neg max"),
    pytest.param(ModelRuntimeConfig(max_replicas=1025), "max-replicas", id="huge max"),
    pytest.param(
        ModelRuntimeConfig(min_replicas=3, max_replicas=2), "is above max-replicas", id="min>max"
    ),
    pytest.param(ModelRuntimeConfig(keep_alive=float("nan")), "keep-alive", id="nan"),
    pytest.param(ModelRuntimeConfig(keep_alive=float("inf")), "keep-alive", id="inf"),
    pytest.param(ModelRuntimeConfig(llama_args=("--port", "1")), "--port", id="reserved arg"),
    pytest.param(ModelRuntimeConfig(llama_args=("--lora", "x")), "not allowed", id="unknown arg"),
    pytest.param(ModelRuntimeConfig(required_tags={"": "x"}), "tag name", id="empty tag name"),
    pytest.param(ModelRuntimeConfig(required_tags={"gpu": ""}), "tag value", id="empty value"),
    pytest.param(ModelRuntimeConfig(required_tags={"g\npu": "x"}), "tag name", id="control"),
    pytest.param(
        ModelRuntimeConfig(required_tags={"gpu": "x" * 257}), "tag value", id="long value"
    ),
    pytest.param(
        ModelRuntimeConfig(required_tags={f"t{i}": "x" for i in range(MAX_REQUIRED_TAGS + 1)}),
        "at most",
        id="too many tags",
    ),
]


@pytest.mark.parametrize(("config", "message"), INVALID)
def test_invalid_configs(config: ModelRuntimeConfig, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        config.validate()


def test_max_replicas_zero_means_default_so_any_min_is_fine() -> None:
    ModelRuntimeConfig(min_replicas=7, max_replicas=0).validate()


def test_config_is_frozen() -> None:
    config = ModelRuntimeConfig(llama_args=["--jinja"], required_tags={"a": "b"})  # type: ignore[arg-type]
    assert config.llama_args == ("--jinja",)
    with pytest.raises(TypeError):
        config.required_tags["a"] = "c"  # type: ignore[index]


@pytest.mark.parametrize(
    ("config", "default", "expected"),
    [
        pytest.param(None, 300.0, 300.0, id="no config: default"),
        pytest.param(ModelRuntimeConfig(), 300.0, 300.0, id="unset: default"),
        pytest.param(ModelRuntimeConfig(), None, None, id="unset, default never"),
        pytest.param(ModelRuntimeConfig(keep_alive=0.0), 300.0, 0.0, id="zero: right after use"),
        pytest.param(ModelRuntimeConfig(keep_alive=60.0), None, 60.0, id="set beats never"),
        pytest.param(ModelRuntimeConfig(keep_alive=NEVER_UNLOAD), 300.0, None, id="-1: never"),
        pytest.param(ModelRuntimeConfig(keep_alive=-5.0), 300.0, None, id="negative: never"),
    ],
)
def test_effective_keep_alive(
    config: ModelRuntimeConfig | None, default: float | None, expected: float | None
) -> None:
    assert effective_keep_alive(config, default) == expected


# --- proto ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [None, 0.0, -1.0, 42.5])
def test_proto_round_trip(keep_alive: float | None) -> None:
    config = ModelRuntimeConfig(
        context_size=FULL.context_size,
        keep_alive=keep_alive,
        llama_args=FULL.llama_args,
        required_tags=FULL.required_tags,
        min_replicas=FULL.min_replicas,
        max_replicas=FULL.max_replicas,
        parallel=FULL.parallel,
    )
    message = config_to_proto(config)
    assert message.HasField("keep_alive_seconds") == (keep_alive is not None)
    wire = common_pb2.ModelRuntimeConfig.FromString(message.SerializeToString())
    assert config_from_proto(wire) == config


def test_unset_keep_alive_differs_from_zero_on_the_wire() -> None:
    unset = config_from_proto(common_pb2.ModelRuntimeConfig())
    zero = config_from_proto(common_pb2.ModelRuntimeConfig(keep_alive_seconds=0))
    assert unset.keep_alive is None
    assert zero.keep_alive == 0.0
    assert effective_keep_alive(unset, 300.0) == 300.0
    assert effective_keep_alive(zero, 300.0) == 0.0


# --- store ----------------------------------------------------------------------------------


async def test_in_memory_store(tmp_path: Path) -> None:
    store = ConfigStore(None)
    await store.load()
    assert store.entries() == []
    await store.put(entry("b"))
    await store.put(entry("a"))
    assert [e.reference for e in store.entries()] == ["ai/a:latest", "ai/b:latest"]
    assert store.get(entry("a").model_id) == entry("a")
    assert store.get("sha256:missing") is None
    assert names(tmp_path) == []


async def test_configurations_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "model-configs.json"
    first = ConfigStore(path)
    await first.load()
    await first.put(entry("a"))
    await first.put(entry("b", ModelRuntimeConfig(keep_alive=0.0)))
    await first.put(entry("a", ModelRuntimeConfig(keep_alive=NEVER_UNLOAD)))

    second = ConfigStore(path)
    assert second.entries() == []
    await second.load()
    assert second.entries() == first.entries()
    assert second.get(entry("a").model_id) == entry("a", ModelRuntimeConfig(keep_alive=-1.0))
    assert second.get(entry("b").model_id) == entry("b", ModelRuntimeConfig(keep_alive=0.0))


async def test_file_is_a_versioned_document_and_no_temp_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "configs.json"
    store = ConfigStore(path)
    await store.put(entry("a"))
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert [m["model_id"] for m in document["models"]] == [entry("a").model_id]
    assert document["models"][0]["config"]["keep_alive"] == 120.0
    assert names(tmp_path) == ["configs.json"]


async def test_invalid_config_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "configs.json"
    store = ConfigStore(path)
    with pytest.raises(InvalidRequest):
        await store.put(entry("a", ModelRuntimeConfig(parallel=-1)))
    assert store.entries() == []
    assert not path.exists()


async def test_failed_write_leaves_the_state_unchanged(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = ConfigStore(blocker / "configs.json")
    with pytest.raises(Unavailable, match="cannot save"):
        await store.put(entry("a"))
    assert store.get(entry("a").model_id) is None


async def test_concurrent_puts_are_all_kept_and_the_file_is_always_whole(tmp_path: Path) -> None:
    path = tmp_path / "configs.json"
    store = ConfigStore(path)
    stop = threading.Event()
    reads: list[int] = []
    torn: list[str] = []

    def read_continuously() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            try:
                reads.append(len(json.loads(text)["models"]))
            except ValueError:
                torn.append(text)

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        names = [f"{i:02d}" for i in range(30)]
        await asyncio.gather(*(store.put(entry(n)) for n in names))
    finally:
        stop.set()
        reader.join()
    assert torn == []
    assert reads == sorted(reads)
    reloaded = ConfigStore(path)
    await reloaded.load()
    assert len(reloaded.entries()) == 30
    assert reloaded.entries() == store.entries()


async def test_an_older_write_never_replaces_a_newer_one(tmp_path: Path) -> None:
    """A put cancelled while its thread writes releases the lock before the write ends; the
    writer's sequence numbers keep the later document."""
    path = tmp_path / "configs.json"
    store = ConfigStore(path)
    store._write_sync(path, 2, b'{"version": 1, "models": []}')
    store._write_sync(path, 1, b"stale")
    assert json.loads(path.read_text()) == {"version": 1, "models": []}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{not json", id="not json"),
        pytest.param(b"\xff\xfe", id="not utf-8"),
        pytest.param(b"[]", id="not an object"),
        pytest.param(b'{"version": 99, "models": []}', id="unknown version"),
        pytest.param(b'{"version": 1, "models": {}}', id="models not a list"),
    ],
)
async def test_corrupt_file_is_moved_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "configs.json"
    path.write_bytes(content)
    clock = WallClock()
    store = ConfigStore(path, clock=clock)
    await store.load()
    assert store.entries() == []
    aside = tmp_path / f"configs.json.corrupt-{int(clock.wall())}"
    assert aside.read_bytes() == content
    assert not path.exists()
    await store.put(entry("a"))
    assert json.loads(path.read_text())["version"] == 1


async def test_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "configs.json"
    path.mkdir()
    store = ConfigStore(path, clock=WallClock())
    await store.load()
    assert store.entries() == []
    assert names(tmp_path) == [f"configs.json.corrupt-{int(WallClock().wall())}"]


async def test_invalid_entries_are_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "configs.json"
    good = entry("a")
    store = ConfigStore(path)
    await store.put(good)
    document = json.loads(path.read_text())
    document["models"] += [
        {"model_id": "sha256:b", "reference": "ai/b", "config": {"llama_args": ["--port", "1"]}},
        {"model_id": "sha256:c", "reference": "ai/c", "config": {"parallel": "four"}},
        {"reference": "ai/d", "config": {}},
        "garbage",
    ]
    path.write_text(json.dumps(document))
    reloaded = ConfigStore(path)
    await reloaded.load()
    assert reloaded.entries() == [good]
    assert path.exists()
