"""The Responses API through the real stack (gateway -> scheduler -> worker -> llama-server with
SmolLM2), driven by the official `openai` SDK: create (streamed and not), retrieve, input_items,
delete, previous_response_id, a forced function call, JSON-schema output and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import openai
import orjson
import pytest

from services.gateway.openai.responses import PREFIXES
from services.stack.launcher import LocalStack
from tests.integration.test_openai_features import CITY_SCHEMA, PERSON_SCHEMA, package_tools_model

pytestmark = pytest.mark.integration

MODEL = "ai/smollm2"
GREEDY: dict[str, Any] = {"temperature": 0.0}
RESPONSE_TOOLS: list[Any] = [
    {"type": "function", "name": name, "description": description, "parameters": CITY_SCHEMA}
    for name, description in (
        ("get_weather", "Get the weather in a city"),
        ("get_time", "Get the local time in a city"),
    )
]
# An earlier call of get_weather: left to itself, the model calls get_weather again.
EXAMPLE_INPUT: list[Any] = [
    {"role": "user", "content": "Weather in Rome?"},
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Rome"}',
    },
    {"role": "user", "content": "Weather in Paris?"},
]


def sdk(stack: LocalStack, prefix: str = "/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.gateway_url + prefix, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
async def tools_model(stack: LocalStack, gguf_path: Path) -> str:
    return await package_tools_model(stack, gguf_path)


async def test_create_retrieve_input_items_and_delete(stack: LocalStack) -> None:
    async with sdk(stack) as client:
        created = await client.responses.create(
            model=MODEL,
            instructions="You are a poet.",
            input="Write about the sea.",
            max_output_tokens=6,
            **GREEDY,
        )
        retrieved = await client.responses.retrieve(created.id)
        items = await client.responses.input_items.list(created.id)
        await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)

    assert created.id.startswith("resp_") and created.object == "response"
    assert created.status == "incomplete"  # 6 tokens cannot finish a poem
    assert created.incomplete_details is not None
    assert created.incomplete_details.reason == "max_output_tokens"
    assert created.output_text and created.instructions == "You are a poet."
    usage = created.usage
    assert usage is not None and usage.output_tokens == 6
    assert usage.input_tokens > 0 and usage.total_tokens == usage.input_tokens + 6
    assert retrieved.model_dump() == created.model_dump()
    [item] = items.data
    assert item.type == "message" and item.role == "user"
    assert item.content[0].text == "Write about the sea."  # type: ignore[union-attr]


async def test_streamed_json_schema_output_equals_the_plain_one(stack: LocalStack) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "input": "Describe a person.",
        "text": {"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA}},
        "max_output_tokens": 64,
        **GREEDY,
    }
    async with sdk(stack, "/engines/v1") as client:
        plain = await client.responses.create(**request)
        async with client.responses.stream(**request) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()

    assert plain.status == "completed"
    jsonschema.validate(orjson.loads(plain.output_text), PERSON_SCHEMA)
    assert final.output_text == plain.output_text and final.status == "completed"
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == plain.output_text
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.usage is not None and plain.usage is not None
    assert final.usage.output_tokens == plain.usage.output_tokens


async def test_previous_response_id_continues_the_conversation(stack: LocalStack) -> None:
    async with sdk(stack, "/engines/llama.cpp/v1") as client:
        first = await client.responses.create(
            model=MODEL, input="The password is banana.", max_output_tokens=24, **GREEDY
        )
        follow_up = await client.responses.create(
            model=MODEL,
            input="What is the password?",
            previous_response_id=first.id,
            max_output_tokens=24,
            **GREEDY,
        )
        alone = await client.responses.create(
            model=MODEL, input="What is the password?", max_output_tokens=24, **GREEDY
        )
        items = await client.responses.input_items.list(follow_up.id)

    assert follow_up.previous_response_id == first.id
    assert first.usage is not None and follow_up.usage is not None and alone.usage is not None
    # The first turn (its input and its answer) is in the second request's prompt.
    assert follow_up.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert follow_up.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    assert "banana" in follow_up.output_text.lower()
    assert "banana" not in alone.output_text.lower()
    assert [item.content[0].text for item in items.data] == ["What is the password?"]  # type: ignore[union-attr]


async def test_a_forced_function_call_and_its_output(stack: LocalStack, tools_model: str) -> None:
    request: dict[str, Any] = {
        "model": tools_model,
        "input": EXAMPLE_INPUT,
        "tools": RESPONSE_TOOLS,
        "tool_choice": {"type": "function", "name": "get_time"},
        "max_output_tokens": 48,
        **GREEDY,
    }
    async with sdk(stack) as client:
        plain = await client.responses.create(**request)
        async with client.responses.stream(**request) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        [call] = plain.output
        assert call.type == "function_call"
        answered = await client.responses.create(
            model=tools_model,
            previous_response_id=plain.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "12:00"}],
            # Tools are not carried over from the previous response (as with OpenAI).
            tools=RESPONSE_TOOLS,
            tool_choice="none",
            max_output_tokens=16,
            **GREEDY,
        )

    assert plain.status == "completed"
    assert call.name == "get_time" and call.call_id
    arguments = orjson.loads(call.arguments)
    jsonschema.validate(arguments, CITY_SCHEMA)

    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    [streamed] = final.output
    assert streamed.type == "function_call" and streamed.name == "get_time"
    assert orjson.loads(streamed.arguments) == arguments

    assert answered.output_text and answered.output[0].type == "message"
    assert answered.usage is not None and plain.usage is not None
    assert answered.usage.input_tokens > plain.usage.input_tokens + plain.usage.output_tokens


async def test_every_prefix_serves_one_shared_store(stack: LocalStack) -> None:
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 2, **GREEDY}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
        for index, prefix in enumerate(PREFIXES):
            created = await http.post(prefix, json=body)
            assert created.status_code == 200, (prefix, created.text)
            response_id = created.json()["id"]
            other = PREFIXES[(index + 1) % len(PREFIXES)]
            assert (await http.get(f"{other}/{response_id}")).json()["id"] == response_id
            assert (await http.delete(f"{other}/{response_id}")).json()["deleted"] is True
            assert (await http.get(f"{prefix}/{response_id}")).status_code == 404


async def test_errors_are_the_sdks_own_exceptions(stack: LocalStack) -> None:
    async with sdk(stack) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_unknown")
        with pytest.raises(openai.NotFoundError):
            await client.responses.delete("resp_unknown")
        with pytest.raises(openai.NotFoundError):
            await client.responses.input_items.list("resp_unknown")
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="ai/no-such-model", input="hi")
        with pytest.raises(openai.NotFoundError, match="resp_gone"):
            await client.responses.create(model=MODEL, input="hi", previous_response_id="resp_gone")
        with pytest.raises(openai.BadRequestError, match="input"):
            await client.responses.create(model=MODEL, input=[{"type": "item_reference"}])  # type: ignore[list-item]
        not_kept = await client.responses.create(
            model=MODEL, input="Hi", store=False, max_output_tokens=2
        )
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(not_kept.id)
