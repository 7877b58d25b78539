"""The simulated engine: OpenAI-shaped deterministic answers, slots, prompt cache, cancellation."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.common.digest import sha256_digest
from services.worker.artifact import GGUF_MEDIA_TYPE, Layer, ModelSpec
from services.worker.engine import Endpoint, LoadOptions
from services.worker.errors import ModelNotReadyError, UpstreamError
from services.worker.pool import PoolSettings, RunnerPool
from services.worker.simulated.answers import EMBEDDING_SIZE, FINGERPRINT
from services.worker.simulated.engine import SimulatedEngine
from services.worker.simulated.serving import SimulatedServer, SimulationSettings
from tests.unit.worker.support import eventually

CHAT = Endpoint.CHAT_COMPLETIONS


class FixedClock:
    def monotonic(self) -> float:
        return 0.0

    def wall(self) -> float:
        return 1_700_000_000.5


def server(
    slots: int = 2,
    *,
    context_size: int = 0,
    tokens_per_second: float = 2000.0,
    prompt_tokens_per_second: float = 100_000.0,
    max_tokens: int = 4,
) -> SimulatedServer:
    return SimulatedServer(
        alias="ai/sim:latest",
        slots=slots,
        context_size=context_size,
        settings=SimulationSettings(
            load_time=0.0,
            tokens_per_second=tokens_per_second,
            prompt_tokens_per_second=prompt_tokens_per_second,
            max_tokens=max_tokens,
        ),
        clock=FixedClock(),
    )


def chat(*contents: str, stream: bool = False, **extra: Any) -> bytes:
    messages = [
        {"role": "user" if index % 2 == 0 else "assistant", "content": content}
        for index, content in enumerate(contents)
    ]
    return json.dumps({"messages": messages, "stream": stream, **extra}).encode()


async def call(
    sim: SimulatedServer, body: bytes, endpoint: Endpoint = CHAT
) -> tuple[int, dict[str, Any]]:
    async with sim.forward(endpoint, body, stream=False) as upstream:
        data = b"".join([chunk async for chunk in upstream.chunks()])
        return upstream.status_code, json.loads(data)


def events(body: bytes) -> list[bytes]:
    assert body.endswith(b"data: [DONE]\n\n")
    parts = body.split(b"\n\n")
    assert parts[-1] == b""
    assert all(part.startswith(b"data: ") for part in parts[:-1])
    return [part[len(b"data: ") :] for part in parts[:-2]]


def words(count: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{index}" for index in range(count))


async def test_chat_answer_is_openai_shaped_and_deterministic() -> None:
    first_status, first = await call(server(), chat("hello there", max_tokens=3))
    _, again = await call(server(), chat("hello there", max_tokens=3))
    assert first_status == 200
    completion = ChatCompletion.model_validate(first)
    assert completion.choices[0].message.content == "token0 token1 token2"
    assert completion.choices[0].finish_reason == "length"
    assert completion.system_fingerprint == FINGERPRINT
    assert (completion.model, completion.created) == ("ai/sim:latest", 1_700_000_000)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    assert first["timings"]["predicted_n"] == 3
    assert first == again


async def test_stream_is_parseable_by_the_openai_sdk() -> None:
    sim = server(max_tokens=5)
    body = chat("one two three", stream=True, stream_options={"include_usage": True})
    async with sim.forward(CHAT, body, stream=True) as upstream:
        assert (upstream.status_code, upstream.content_type) == (200, "text/event-stream")
        raw = b"".join([chunk async for chunk in upstream.chunks()])
    chunks = [ChatCompletionChunk.model_validate_json(event) for event in events(raw)]
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == "token0 token1 token2 token3 token4"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    finals = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert [chunk.choices[0].finish_reason for chunk in finals] == ["length"]
    assert json.loads(events(raw)[-2])["timings"]["predicted_n"] == 5
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


async def test_completions_and_embeddings_are_openai_shaped() -> None:
    sim = server()
    status, body = await call(sim, b'{"prompt": "a b c", "max_tokens": 2}', Endpoint.COMPLETIONS)
    assert status == 200
    assert Completion.model_validate(body).choices[0].text == "token0 token1"
    assert body["timings"]["prompt_n"] + body["timings"]["cache_n"] == 3

    async with sim.forward(
        Endpoint.COMPLETIONS, b'{"prompt": "a b", "stream": true}', stream=True
    ) as upstream:
        raw = b"".join([chunk async for chunk in upstream.chunks()])
    texts = [json.loads(event)["choices"][0]["text"] for event in events(raw)]
    assert "".join(texts) == "token0 token1 token2 token3"

    status, body = await call(
        sim, b'{"input": ["hello world", "hello world", "bye"]}', Endpoint.EMBEDDINGS
    )
    parsed = CreateEmbeddingResponse.model_validate(body)
    vectors = [item.embedding for item in parsed.data]
    assert all(len(vector) == EMBEDDING_SIZE for vector in vectors)
    assert vectors[0] == vectors[1] != vectors[2]
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0)
    assert parsed.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": [{"role": "user", "content": "' + b"x " * 40 + b'"}]}', "context size"),
    ],
)
async def test_bad_requests_get_llama_servers_400(body: bytes, message: str) -> None:
    status, answer = await call(server(context_size=32), body)
    assert status == 400
    assert answer["error"]["code"] == 400 and message in answer["error"]["message"]


async def test_max_tokens_then_default_then_context_bound_the_answer() -> None:
    sim = server(context_size=12, max_tokens=4)
    for extra, expected in [
        ({"max_tokens": 2}, 2),
        ({"max_completion_tokens": 3}, 3),
        ({"n_predict": 1}, 1),
        ({}, 4),
        ({"max_tokens": 50}, 12 - 3),
    ]:
        _, body = await call(sim, chat("a b c", **extra))
        assert body["usage"]["completion_tokens"] == expected, extra


async def test_the_prompt_cache_makes_a_continued_conversation_cheap() -> None:
    # 1000 prompt tokens/s: a 200-word prompt costs 200 ms unless its slot has it cached.
    sim = server(slots=2, prompt_tokens_per_second=1000.0)
    system = words(200, "s")
    _, first = await call(sim, chat(system, max_tokens=3))
    assert (first["timings"]["cache_n"], first["timings"]["prompt_n"]) == (0, 200)
    assert first["timings"]["prompt_ms"] == pytest.approx(200.0)
    # Another conversation goes to the other (empty, least recently used) slot.
    _, other = await call(sim, chat(words(200, "o"), max_tokens=3))
    assert other["timings"]["cache_n"] == 0

    answer = first["choices"][0]["message"]["content"]
    started = time.monotonic()
    _, turn = await call(sim, chat(system, answer, "next question", max_tokens=3))
    elapsed = time.monotonic() - started
    # The whole first turn, answer included, came from the slot's cache.
    assert turn["timings"]["cache_n"] == 203
    assert turn["timings"]["prompt_n"] == 2
    assert turn["timings"]["prompt_ms"] == pytest.approx(2.0)
    assert turn["usage"]["prompt_tokens_details"]["cached_tokens"] == 203

    started = time.monotonic()
    _, cold = await call(
        server(slots=2, prompt_tokens_per_second=1000.0), chat(system, answer, "q")
    )
    cold_elapsed = time.monotonic() - started
    assert cold["timings"]["cache_n"] == 0 and cold["timings"]["prompt_ms"] == pytest.approx(204)
    # Sleeps never end early: the cold request really took its prompt time, the warm one less.
    assert cold_elapsed >= 0.204 and elapsed < cold_elapsed


async def test_the_same_prompt_again_reevaluates_its_last_token() -> None:
    sim = server(slots=1)
    await call(sim, chat("a b c d"))
    _, again = await call(sim, chat("a b c d"))
    assert (again["timings"]["cache_n"], again["timings"]["prompt_n"]) == (3, 1)


async def _first_chunk(
    stack: AsyncExitStack, sim: SimulatedServer, body: bytes
) -> AsyncGenerator[bytes, None]:
    upstream = await stack.enter_async_context(sim.forward(CHAT, body, stream=True))
    chunks = upstream.chunks()
    stack.push_async_callback(chunks.aclose)
    await anext(chunks)
    return chunks


async def test_slots_cap_concurrency_and_deferred_requests_are_served_in_order() -> None:
    sim = server(slots=2, max_tokens=3)
    order: list[str] = []
    async with AsyncExitStack() as a_stack, AsyncExitStack() as b_stack:
        await _first_chunk(a_stack, sim, chat("a", stream=True))
        await _first_chunk(b_stack, sim, chat("b", stream=True))

        async def deferred(name: str) -> None:
            async with AsyncExitStack() as stack:
                await _first_chunk(stack, sim, chat(name, stream=True))
                order.append(name)

        waiting = [asyncio.create_task(deferred(name)) for name in ("c", "d")]
        await eventually(lambda: sim.slots.deferred == 2, what="two deferred requests")
        text = await sim.metrics(timeout=1, max_bytes=1 << 16)
        assert "llamacpp:requests_processing 2\n" in text
        assert "llamacpp:requests_deferred 2\n" in text
        await b_stack.aclose()  # the client of b goes away mid-answer
        await eventually(lambda: order == ["c", "d"], what="c, then d, to be served")
        await asyncio.gather(*waiting)
    assert (sim.slots.processing, sim.slots.deferred) == (0, 0)


async def test_cancelling_a_request_stops_generation_and_frees_its_slot() -> None:
    sim = server(slots=1, tokens_per_second=5.0, max_tokens=100)
    stream = chat("long answer please", stream=True)

    async def read_all(chunks: list[bytes]) -> None:
        async with sim.forward(CHAT, stream, stream=True) as upstream:
            async for chunk in upstream.chunks():
                chunks.append(chunk)

    received: list[bytes] = []
    reader = asyncio.create_task(read_all(received))
    await eventually(lambda: len(received) == 1, what="the first token")
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert sim.slots.processing == 0
    predicted = await sim.metrics(timeout=1, max_bytes=1 << 16)
    assert "llamacpp:tokens_predicted_total 1\n" in predicted

    waiting = asyncio.create_task(call(sim, chat("not streamed", max_tokens=50)))
    await eventually(lambda: sim.slots.processing == 1, what="the non-streamed request")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert sim.slots.processing == 0


async def test_metrics_count_processed_prompt_tokens_and_predictions() -> None:
    sim = server(slots=1, max_tokens=2)
    await call(sim, chat("a b c d"))
    await call(sim, chat("a b c d", "token0 token1", "e"))
    text = await sim.metrics(timeout=1, max_bytes=1 << 16)
    # 4, then only the new word: the first turn and its answer are cached.
    assert "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 5\n" in text
    assert "llamacpp:tokens_predicted_total 4\n" in text
    with pytest.raises(UpstreamError, match="exceed"):
        await sim.metrics(timeout=1, max_bytes=10)


# -- through the pool -------------------------------------------------------------------------


def _spec(size: int = 4096) -> ModelSpec:
    layer = Layer(GGUF_MEDIA_TYPE, sha256_digest(b"weights"), size)
    return ModelSpec(model_id=sha256_digest(b"manifest"), layers=(layer,), context_size=2048)


@pytest.fixture
async def sim_pool() -> AsyncIterator[RunnerPool]:
    engine = SimulatedEngine(SimulationSettings(load_time=0.05, tokens_per_second=1000.0))
    pool = RunnerPool(PoolSettings(max_runners=2, drain_timeout=0.2), engine)
    yield pool
    await pool.close()


async def test_a_simulated_load_takes_the_load_time_and_reports_its_options(
    sim_pool: RunnerPool,
) -> None:
    started = time.monotonic()
    snapshot = await sim_pool.load(_spec(), "ai/sim", LoadOptions(memory_estimate_bytes=10**9))
    assert time.monotonic() - started >= 0.05
    assert (snapshot.parallel, snapshot.context_size, snapshot.pid) == (4, 2048, None)
    assert snapshot.memory_bytes == 10**9
    bigger = await sim_pool.load(_spec(size=2 * 10**9), "ai/sim", LoadOptions(parallel=2))
    assert (bigger.parallel, bigger.memory_bytes, bigger.generation) == (2, 2 * 10**9, 2)


async def test_unloading_breaks_off_answers_still_running(sim_pool: RunnerPool) -> None:
    spec = _spec()
    await sim_pool.load(spec, "ai/sim")
    body = chat("x", stream=True, max_tokens=10_000)
    async with sim_pool.acquire(spec.model_id) as runner:
        async with runner.client.forward(CHAT, body, stream=True) as upstream:
            chunks = upstream.chunks()
            await anext(chunks)
            unloading = asyncio.create_task(sim_pool.unload(spec.model_id))
            with pytest.raises(UpstreamError, match="stopped mid-response"):
                async for _ in chunks:
                    pass
            await chunks.aclose()
    assert await unloading
    with pytest.raises(ModelNotReadyError):
        async with sim_pool.acquire(spec.model_id):
            pass
