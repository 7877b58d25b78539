"""Ollama's API on the real chain (gateway -> scheduler -> worker -> llama-server, SmolLM2), driven
by the official `ollama` Python client. Tests run in file order on one stack; the last one pushes
the model to a real registry, deletes it locally and pulls it back."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from services.stack.launcher import LocalStack
from tests.integration.registry.conftest import running_registry
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

MODEL = "smollm2"
STORED = "ai/smollm2:latest"
GREEDY = {"temperature": 0, "seed": 42}
PROMPT = [{"role": "user", "content": "Name three colours."}]
# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture
async def client(stack: LocalStack) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=stack.gateway_url, timeout=120)
    try:
        yield client
    finally:
        await client.close()


async def test_version_list_and_show(client: ollama.AsyncClient, stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
        version = (await http.get("/api/version")).json()["version"]
    assert [int(part) for part in version.split(".")] >= [0, 5, 0]

    listed = await client.list()
    [entry] = [model for model in listed.models if model.model == STORED]
    assert entry.details is not None
    assert (entry.details.format, entry.details.family) == ("gguf", "llama")
    assert entry.details.quantization_level == "Q4_1"
    assert entry.size is not None and entry.size > 90_000_000
    assert entry.digest is not None and len(entry.digest) == 64

    shown = await client.show(MODEL)
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.template and "im_start" in shown.template
    assert shown.capabilities is not None and "completion" in shown.capabilities


async def test_chat_streaming_and_not_agree(client: ollama.AsyncClient) -> None:
    options = {**GREEDY, "num_predict": 12}
    whole = await client.chat(model=MODEL, messages=PROMPT, options=options, stream=False)
    parts = [
        part
        async for part in await client.chat(
            model=MODEL, messages=PROMPT, options=options, stream=True
        )
    ]

    streamed = "".join(part.message.content or "" for part in parts)
    assert whole.message.content
    assert streamed == whole.message.content
    assert len(parts) > 2
    assert [part.done for part in parts].count(True) == 1
    final = parts[-1]
    for answer in (whole, final):
        assert answer.done is True
        assert answer.done_reason in ("stop", "length")
        assert answer.eval_count is not None and 0 < answer.eval_count <= 12
        assert answer.prompt_eval_count is not None and answer.prompt_eval_count > 5
        assert answer.eval_duration and answer.prompt_eval_duration
        assert answer.total_duration is not None and answer.load_duration is not None
        assert answer.total_duration >= answer.eval_duration + answer.prompt_eval_duration
        assert answer.load_duration >= 0
    # Each streamed piece is about one token.
    assert final.eval_count == whole.eval_count
    assert len([p for p in parts if p.message.content]) <= (final.eval_count or 0)


async def test_generate_streaming_not_and_raw(client: ollama.AsyncClient) -> None:
    options = {**GREEDY, "num_predict": 10}
    whole = await client.generate(
        model=MODEL, prompt="Why is the sky blue?", system="Be brief.", options=options
    )
    parts = [
        part
        async for part in await client.generate(
            model=MODEL,
            prompt="Why is the sky blue?",
            system="Be brief.",
            options=options,
            stream=True,
        )
    ]
    assert whole.response
    assert "".join(part.response or "" for part in parts) == whole.response
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count

    raw = await client.generate(
        model=MODEL,
        prompt="The capital of France is",
        raw=True,
        options={**GREEDY, "num_predict": 4},
    )
    assert raw.response
    # Raw: the prompt alone, no chat template around it.
    assert raw.prompt_eval_count is not None and raw.prompt_eval_count < 10
    assert raw.eval_count is not None and raw.eval_count <= 4


async def test_options_limit_and_seed(client: ollama.AsyncClient) -> None:
    short = await client.generate(
        model=MODEL, prompt="Tell me a long story.", options={**GREEDY, "num_predict": 3}
    )
    assert short.eval_count == 3
    assert short.done_reason == "length"

    sampled = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7, "num_predict": 16}
    first, second = [
        await client.generate(model=MODEL, prompt="Write a word.", options=sampled)
        for _ in range(2)
    ]
    assert first.response == second.response

    stopped = await client.generate(
        model=MODEL, prompt="Count: 1, 2, 3,", raw=True, options={**GREEDY, "stop": [","]}
    )
    assert "," not in (stopped.response or "")


async def test_format_json_and_schema(client: ollama.AsyncClient) -> None:
    as_json = await client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply with a JSON object with one key, colour."}],
        format="json",
        options={**GREEDY, "num_predict": 80},
    )
    assert as_json.done_reason == "stop"
    assert isinstance(json.loads(as_json.message.content or ""), dict)

    person = await client.generate(
        model=MODEL,
        prompt="Invent a person with a name and an age.",
        format=PERSON,
        options={**GREEDY, "num_predict": 60},
    )
    parsed = json.loads(person.response or "")
    assert set(parsed) >= {"name", "age"}
    assert isinstance(parsed["name"], str)
    assert isinstance(parsed["age"], int)


async def test_embed_and_legacy_embeddings(client: ollama.AsyncClient) -> None:
    embedded = await client.embed(model=MODEL, input=["The cat sat.", "A dog ran."])
    first, second = embedded.embeddings
    assert len(first) == len(second) > 100
    assert math.isclose(math.sqrt(sum(v * v for v in first)), 1.0, rel_tol=1e-3)
    assert first != second
    assert embedded.prompt_eval_count is not None and embedded.prompt_eval_count > 0

    again = await client.embed(model=MODEL, input="The cat sat.")
    assert again.embeddings[0] == pytest.approx(first, abs=1e-5)

    short = await client.embed(model=MODEL, input="The cat sat.", dimensions=32)
    assert len(short.embeddings[0]) == 32
    assert math.isclose(math.sqrt(sum(v * v for v in short.embeddings[0])), 1.0, rel_tol=1e-3)

    legacy = await client.embeddings(model=MODEL, prompt="The cat sat.")
    assert list(legacy.embedding) == pytest.approx(first, abs=1e-5)


async def test_tools_are_accepted(client: ollama.AsyncClient) -> None:
    """SmolLM2's template knows no tools and Ollama's API cannot force a call, so only the
    plumbing is checked live; whole delivery of streamed calls is in the unit tests."""

    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: the city's name
        """
        return "sunny"

    for stream in (False, True):
        answer: Any = await client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[get_weather],
            options={**GREEDY, "num_predict": 8},
            stream=stream,
        )
        final = [part async for part in answer][-1] if stream else answer
        assert final.done is True
        for call in final.message.tool_calls or []:
            assert isinstance(call.function.arguments, dict)

    # A conversation with a call and its result, in Ollama's shapes (arguments an object, the
    # result tied to its call by name), is accepted by llama-server once translated.
    history = await client.chat(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
        tools=[get_weather],
        options={**GREEDY, "num_predict": 8},
    )
    assert history.message.content


async def test_ps_keep_alive_load_and_unload(client: ollama.AsyncClient, stack: LocalStack) -> None:
    # An empty generate only loads the model.
    load = await client.generate(model=MODEL, prompt="")
    assert (load.done_reason, load.response, load.eval_count) == ("load", "", None)
    loaded = await client.ps()
    [entry] = [model for model in loaded.models if model.model == STORED]
    assert entry.size is not None and entry.size > 0
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
        [placement] = (await http.get("/engines/ps")).json()
    on_cpu = placement["worker_tags"].get("accelerator", "cpu") == "cpu"
    assert entry.size_vram == (0 if on_cpu else entry.size)
    assert entry.details is not None and entry.details.family == "llama"

    unloaded = await client.generate(model=MODEL, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"

    async def gone() -> bool:
        return not (await client.ps()).models

    await wait_until(gone, what="the model unloaded", timeout=30)

    # An empty chat loads it again, kept loaded for the keep_alive it names.
    reloaded = await client.chat(model=MODEL, messages=[], keep_alive="10m")
    assert reloaded.done_reason == "load"
    [entry] = (await client.ps()).models
    assert entry.expires_at is not None
    expected = datetime.now(UTC) + timedelta(minutes=10)
    assert abs((entry.expires_at - expected).total_seconds()) < 60


async def test_errors_are_response_errors_with_status(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="no-such-model", messages=PROMPT)
    assert missing.value.status_code == 404

    with pytest.raises(ollama.ResponseError) as missing_stream:
        async for _ in await client.generate(model="no-such-model", prompt="x", stream=True):
            pass
    assert missing_stream.value.status_code == 404

    with pytest.raises(ollama.ResponseError) as not_shown:
        await client.show("no-such-model")
    assert not_shown.value.status_code == 404

    with pytest.raises(ollama.ResponseError) as bad_option:
        await client.generate(model=MODEL, prompt="x", options={"top_k": "many"})
    assert bad_option.value.status_code == 400
    assert "top_k" in bad_option.value.error

    with pytest.raises(ollama.ResponseError) as no_vision:
        await client.generate(model=MODEL, prompt="What is this?", images=[PNG])
    assert no_vision.value.status_code == 400
    assert "images" in no_vision.value.error

    with pytest.raises(ollama.ResponseError) as too_long:
        await client.generate(model=MODEL, prompt="word " * 20_000, options={"num_predict": 1})
    assert too_long.value.status_code == 400
    assert "context" in too_long.value.error


async def test_copy_and_delete(client: ollama.AsyncClient) -> None:
    assert (await client.copy(MODEL, "team/smollm2-copy:v1")).status == "success"
    names = {model.model for model in (await client.list()).models}
    assert {STORED, "team/smollm2-copy:v1"} <= names

    answer = await client.generate(
        model="team/smollm2-copy:v1", prompt="Hi", options={**GREEDY, "num_predict": 2}
    )
    assert answer.eval_count == 2

    assert (await client.delete("team/smollm2-copy:v1")).status == "success"
    names = {model.model for model in (await client.list()).models}
    assert "team/smollm2-copy:v1" not in names
    assert STORED in names

    with pytest.raises(ollama.ResponseError) as missing:
        await client.delete("team/smollm2-copy:v1")
    assert missing.value.status_code == 404


async def test_push_delete_and_pull_back_with_progress(
    client: ollama.AsyncClient, tmp_path: Path
) -> None:
    with running_registry(tmp_path / "oci") as registry:
        remote = f"{registry.host}/team/smollm2:v1"
        await client.copy(MODEL, remote)
        pushed = [status async for status in await client.push(remote, stream=True)]
        assert pushed[-1].status == "success"
        assert any(status.digest for status in pushed)

        # Every local tag gone: the model and its blobs leave the store.
        await client.delete(remote)
        await client.delete(STORED)
        assert not (await client.list()).models

        pulled = [status async for status in await client.pull(remote, stream=True)]
        assert pulled[0].status == "pulling manifest"
        assert pulled[-1].status == "success"
        layers = [status for status in pulled if status.digest]
        assert layers
        biggest = max(layers, key=lambda status: status.total or 0)
        assert biggest.total is not None and biggest.total > 90_000_000
        done = [s.completed for s in layers if s.digest == biggest.digest]
        assert done == sorted(done)
        assert done[-1] == biggest.total

        again = await client.pull(remote)
        assert again.status == "success"

        with pytest.raises(ollama.ResponseError) as unknown:
            await client.pull(f"{registry.host}/team/none:v1")
        assert unknown.value.status_code == 404

        answer = await client.chat(
            model=remote, messages=PROMPT, options={**GREEDY, "num_predict": 4}
        )
        assert answer.message.content
