"""Everything llama-server supports passes through the OpenAI routes: the official `openai` SDK
against the real stack (gateway -> scheduler -> worker -> llama-server, SmolLM2).

Tool calls need a chat template that describes tools: SmolLM2's own has none, so llama-server
parses no tool calls for it at all. The module packages the same GGUF a second time with
TOOLS_TEMPLATE (a Hermes-style `<tool_call>` template, the format llama-server's parser detects)
as `ai/smollm2-tools`, the way a user would (`POST /models/package` with a chat template). A
135M model still rarely decides to call a tool, so the conversation shows it one earlier call.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import openai
import orjson
import pytest

from services.stack.launcher import LocalStack

pytestmark = pytest.mark.integration

MODEL = "ai/smollm2"
TOOLS_MODEL = "ai/smollm2-tools"
DETERMINISTIC: dict[str, Any] = {"temperature": 0.0, "seed": 42}
CHUNK = 1024 * 1024

TOOLS_TEMPLATE = (
    "{%- set ns = namespace(system='You are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face') -%}\n"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set ns.system = messages[0].content -%}{%- endif -%}\n"
    "{{- '<|im_start|>system\\n' + ns.system -}}\n"
    "{%- if tools -%}\n"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to answer the user.\\n\\n"
    "The function signatures are within <tools></tools> XML tags:\\n<tools>' -}}\n"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}\n"
    "{{- '\\n</tools>\\n\\nTo call a function, return a JSON object with its name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n'
    "</tool_call>' -}}\n"
    "{%- endif -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- for message in messages -%}\n"
    "{%- if message.role == 'system' and loop.first -%}\n"
    "{%- elif message.role == 'assistant' -%}\n"
    "{{- '<|im_start|>assistant' -}}\n"
    "{%- if message.content -%}{{- '\\n' + message.content -}}{%- endif -%}\n"
    "{%- for call in message.tool_calls or [] -%}\n"
    "{%- if call.function is defined -%}{%- set call = call.function -%}{%- endif -%}\n"
    '{{- \'\\n<tool_call>\\n{"name": "\' + call.name + \'", "arguments": \' + '
    "(call.arguments | tojson) + '}\\n</tool_call>' -}}\n"
    "{%- endfor -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- elif message.role == 'tool' -%}\n"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + "
    "'\\n</tool_response><|im_end|>\\n' -}}\n"
    "{%- else -%}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"
)

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = {"name": "get_weather", "description": "Get the weather in a city"}
TIME = {"name": "get_time", "description": "Get the local time in a city"}
CHAT_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {**tool, "parameters": CITY_SCHEMA}}
    for tool in (WEATHER, TIME)
]
# One earlier call of get_weather: left to itself, the model calls get_weather again.
EXAMPLE_TURN: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Rome?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            }
        ],
    },
    {"role": "user", "content": "Weather in Paris?"},
]
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(handle.read, CHUNK):
            yield data
    finally:
        handle.close()


async def package_tools_model(stack: LocalStack, gguf: Path) -> str:
    """`ai/smollm2-tools`: the SmolLM2 GGUF with TOOLS_TEMPLATE as its chat template."""
    size = (await asyncio.to_thread(gguf.stat)).st_size
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=300) as http:
        reply = await http.post(
            "/models/package",
            params={"tag": TOOLS_MODEL, "context_size": "4096"},
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "X-Model-Chat-Template": base64.b64encode(TOOLS_TEMPLATE.encode()).decode(),
            },
            content=_file_chunks(gguf),
        )
    assert reply.status_code == 201, reply.text
    return TOOLS_MODEL


def sdk(stack: LocalStack, prefix: str = "/engines/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.gateway_url + prefix, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
async def tools_model(stack: LocalStack, gguf_path: Path) -> str:
    return await package_tools_model(stack, gguf_path)


async def test_include_usage_is_in_the_last_chunk_and_matches_a_plain_call(
    stack: LocalStack,
) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to five."}],
        "max_tokens": 12,
        **DETERMINISTIC,
    }
    async with sdk(stack) as client:
        whole = await client.chat.completions.create(**request)
        stream = await client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert whole.usage is not None
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens == 12
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


async def test_a_named_tool_choice_forces_that_function(
    stack: LocalStack, tools_model: str
) -> None:
    """llama-server reads an object tool_choice as "auto" (the model would call get_weather,
    as in its example); the gateway narrows the tools to the named one and requires a call."""
    request: dict[str, Any] = {
        "model": tools_model,
        "messages": EXAMPLE_TURN,
        "tools": CHAT_TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "max_tokens": 48,
        **DETERMINISTIC,
    }
    async with sdk(stack) as client:
        whole = await client.chat.completions.create(**request)
        stream = await client.chat.completions.create(**request, stream=True)
        chunks = [chunk async for chunk in stream]

    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_time"]
    arguments = orjson.loads(calls[0].function.arguments)
    jsonschema.validate(arguments, CITY_SCHEMA)

    # Streamed: deltas carry the call's id and name once, then argument fragments by index.
    assembled: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = assembled.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            if delta.function is not None:
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    assert list(assembled) == [0]
    assert assembled[0]["id"]
    assert assembled[0]["name"] == "get_time"
    assert orjson.loads(assembled[0]["arguments"]) == arguments
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"]


async def test_a_tool_choice_naming_an_absent_function_is_a_bad_request(stack: LocalStack) -> None:
    async with sdk(stack) as client:
        with pytest.raises(openai.BadRequestError, match="not in tools"):
            await client.chat.completions.create(  # type: ignore[call-overload]
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                tools=CHAT_TOOLS,
                tool_choice={"type": "function", "function": {"name": "launch_rocket"}},
                max_tokens=8,
            )


async def test_json_schema_response_format_output_validates(stack: LocalStack) -> None:
    async with sdk(stack) as client:
        reply = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a person."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON_SCHEMA},
            },
            max_tokens=64,
            **DETERMINISTIC,
        )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(orjson.loads(reply.choices[0].message.content or ""), PERSON_SCHEMA)


async def test_logprobs_with_top_logprobs(stack: LocalStack) -> None:
    async with sdk(stack) as client:
        reply = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=5,
            logprobs=True,
            top_logprobs=3,
            **DETERMINISTIC,
        )
    assert reply.choices[0].logprobs is not None
    tokens = reply.choices[0].logprobs.content or []
    assert len(tokens) == 5
    assert "".join(token.token for token in tokens) == reply.choices[0].message.content
    for token in tokens:
        assert len(token.top_logprobs) == 3
        ranked = [alternative.logprob for alternative in token.top_logprobs]
        assert ranked == sorted(ranked, reverse=True) and all(p <= 0 for p in ranked)
        # Greedy decoding picks the most likely token.
        assert token.top_logprobs[0].token == token.token


async def test_stop_ends_the_answer_before_the_stop_string(stack: LocalStack) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to ten."}],
        "max_tokens": 24,
        **DETERMINISTIC,
    }
    async with sdk(stack) as client:
        free = await client.chat.completions.create(**request)
        text = free.choices[0].message.content or ""
        # A stop string from the middle of what the model says anyway.
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        stopped = await client.chat.completions.create(**request, stop=[stop])
    assert stop.strip(), text
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


async def test_seed_repeats_sampled_output(stack: LocalStack) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Invent a name for a cat."}],
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 1234,
    }
    async with sdk(stack) as client:
        first, second = [await client.chat.completions.create(**request) for _ in range(2)]
    assert first.choices[0].message.content
    assert first.choices[0].message.content == second.choices[0].message.content


async def test_n_returns_that_many_choices(stack: LocalStack) -> None:
    """llama-server serves n > 1 as n tasks: n choices, indexed 0..n-1 (equal at temperature 0);
    streamed, their deltas interleave, each chunk naming its choice index."""
    async with sdk(stack) as client:
        whole = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=6,
            n=2,
            **DETERMINISTIC,
        )
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=6,
            n=2,
            stream=True,
            **DETERMINISTIC,
        )
        texts = ["", ""]
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
    assert sorted(choice.index for choice in whole.choices) == [0, 1]
    contents = [choice.message.content for choice in whole.choices]
    assert contents[0] and contents[0] == contents[1]
    assert texts == contents


async def test_models_list_and_retrieve_carry_dmr_fields(stack: LocalStack) -> None:
    async with sdk(stack, "/v1") as client:
        listed = await client.models.list()
        one = await client.models.retrieve(MODEL)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("ai/no-such-model")
    entry = next(model for model in listed.data if model.id == "ai/smollm2:latest")
    assert one.id == entry.id and one.owned_by == "docker" and one.created == entry.created
    dmr = (one.model_extra or {})["dmr"]
    assert dmr == (entry.model_extra or {})["dmr"]
    assert dmr["context_window"] == 8192
    assert dmr["architecture"] == "llama"
    assert dmr["quantization"] == "Q4_1"
    assert dmr["parameters"].endswith("M")
    assert dmr["size"].endswith("MiB")


async def test_embeddings_float_and_base64_agree(stack: LocalStack) -> None:
    async with sdk(stack) as client:
        floats = await client.embeddings.create(model=MODEL, input="hello world")
        packed = await client.embeddings.create(
            model=MODEL, input="hello world", encoding_format="base64"
        )
    vector = floats.data[0].embedding
    raw = base64.b64decode(packed.data[0].embedding)  # type: ignore[arg-type]
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(vector) == len(decoded) == 576
    assert all(
        math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(vector, decoded, strict=True)
    )


async def test_legacy_completions_stream_with_usage(stack: LocalStack) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "prompt": "One, two, three,",
        "max_tokens": 8,
        **DETERMINISTIC,
    }
    async with sdk(stack) as client:
        whole = await client.completions.create(**request)
        stream = await client.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert whole.usage is not None and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 8


async def test_errors_are_the_sdks_own_exceptions(stack: LocalStack) -> None:
    async with sdk(stack) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="ai/no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=MODEL, messages="nope")  # type: ignore[arg-type]
        # Refused by the gateway (no model) rather than by llama-server (messages not a list).
        with pytest.raises(openai.BadRequestError, match="model is required"):
            await client.chat.completions.create(
                model="", messages=[{"role": "user", "content": "hi"}]
            )
