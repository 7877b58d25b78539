"""The Anthropic Messages API end to end, driven by the official `anthropic` SDK: gateway ->
scheduler -> worker -> llama-server with SmolLM2. Temperature 0 and small max_tokens keep the
answers reproducible and the module short."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import MessageParam, TextBlock, ToolParam, ToolUseBlock, Usage

from services.stack.launcher import LocalStack

pytestmark = pytest.mark.integration

MODEL = "ai/smollm2"
# This SDK no longer takes sampling parameters as arguments; the API (and the gateway) still do.
DETERMINISTIC = {"temperature": 0.0}
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city's name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
WEATHER_QUESTION: list[MessageParam] = [
    {"role": "user", "content": "What is the weather like in Paris, in celsius?"}
]


@pytest.fixture
async def client(stack: LocalStack) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=stack.gateway_url + "/anthropic", api_key="unused", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


def _prompt_size(usage: Usage) -> int:
    """The whole prompt: Anthropic counts cached prompt tokens apart from the others."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


def _text(content: list[Any]) -> str:
    return "".join(block.text for block in content if isinstance(block, TextBlock))


def _valid_weather_input(arguments: object) -> bool:
    if not isinstance(arguments, dict) or set(arguments) != {"city", "unit"}:
        return False
    return isinstance(arguments["city"], str) and arguments["unit"] in ("celsius", "fahrenheit")


async def test_message_with_system_prompt_and_its_token_count(
    client: anthropic.AsyncAnthropic,
) -> None:
    system = "You are a helpful assistant. Answer in one short sentence."
    messages: list[MessageParam] = [{"role": "user", "content": "Name one colour."}]
    message = await client.messages.create(
        model=MODEL, system=system, messages=messages, max_tokens=24, extra_body=DETERMINISTIC
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert _text(message.content).strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 24

    counted = await client.messages.count_tokens(model=MODEL, system=system, messages=messages)
    assert counted.input_tokens == _prompt_size(message.usage)
    # The system prompt is part of what the model reads: a longer one counts more tokens.
    longer = await client.messages.count_tokens(
        model=MODEL,
        system=system + " Never mention animals, plants or the weather.",
        messages=messages,
    )
    assert longer.input_tokens > counted.input_tokens


async def test_streamed_message_assembles_from_its_deltas(
    client: anthropic.AsyncAnthropic,
) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "Count from one to five."}]
    events: list[str] = []
    deltas: list[str] = []
    async with client.messages.stream(
        model=MODEL, messages=messages, max_tokens=20, extra_body=DETERMINISTIC
    ) as stream:
        async for event in stream:
            events.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)
        final = await stream.get_final_message()

    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert "ping" not in events  # the SDK consumes pings; the rest arrive in Anthropic's order
    assert events.index("content_block_start") < events.index("content_block_delta")
    assert events.index("content_block_stop") < events.index("message_delta")
    assert len(deltas) > 1
    assert _text(final.content) == "".join(deltas)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 20
    counted = await client.messages.count_tokens(model=MODEL, messages=messages)
    assert _prompt_size(final.usage) == counted.input_tokens


async def test_prefilled_answer_continues_without_repeating_the_prefill(
    client: anthropic.AsyncAnthropic,
) -> None:
    prefill = "The capital of France is"
    messages: list[MessageParam] = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": prefill},
    ]
    message = await client.messages.create(
        model=MODEL, messages=messages, max_tokens=8, extra_body=DETERMINISTIC
    )
    async with client.messages.stream(
        model=MODEL, messages=messages, max_tokens=8, extra_body=DETERMINISTIC
    ) as stream:
        streamed = await stream.get_final_message()
    continuation = _text(message.content)
    assert "Paris" in continuation
    assert not continuation.startswith(prefill)
    assert _text(streamed.content) == continuation


async def test_stop_sequence_ends_the_answer_streamed_or_not(
    client: anthropic.AsyncAnthropic,
) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "Say: one two three four five six"}]
    free = await client.messages.create(
        model=MODEL, messages=messages, max_tokens=16, extra_body=DETERMINISTIC
    )
    assert "four" in _text(free.content).lower(), "the prompt must lead the model past 'four'"

    stopped = await client.messages.create(
        model=MODEL,
        messages=messages,
        max_tokens=16,
        extra_body=DETERMINISTIC,
        stop_sequences=["four"],
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == "four"
    assert "four" not in _text(stopped.content)
    assert _text(stopped.content) == _text(free.content)[: len(_text(stopped.content))]

    async with client.messages.stream(
        model=MODEL,
        messages=messages,
        max_tokens=16,
        extra_body=DETERMINISTIC,
        stop_sequences=["four"],
    ) as stream:
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "stop_sequence"
    assert streamed.stop_sequence == "four"
    assert _text(streamed.content) == _text(stopped.content)


async def test_forced_tool_call_follows_the_schema(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=64,
        extra_body=DETERMINISTIC,
    )
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert isinstance(call, ToolUseBlock)
    assert call.name == "get_weather"
    assert call.id.startswith("toolu_")
    assert _valid_weather_input(call.input), call.input

    partial: list[str] = []
    async with client.messages.stream(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=64,
        extra_body=DETERMINISTIC,
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial.append(event.delta.partial_json)
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [streamed] = final.content
    assert isinstance(streamed, ToolUseBlock)
    assert streamed.input == orjson.loads("".join(partial)) == call.input


async def test_structured_output_follows_the_schema(client: anthropic.AsyncAnthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string"}, "hex": {"type": "string"}},
        "required": ["colour", "hex"],
        "additionalProperties": False,
    }
    message = await client.messages.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give one colour and its hex code."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        max_tokens=48,
        extra_body=DETERMINISTIC,
    )
    assert message.stop_reason == "end_turn"
    value = orjson.loads(_text(message.content))
    assert set(value) == {"colour", "hex"}
    assert all(isinstance(item, str) for item in value.values())


async def test_tool_result_round_trip(client: anthropic.AsyncAnthropic) -> None:
    def conversation(result: str) -> list[MessageParam]:
        return [
            *WEATHER_QUESTION,
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris", "unit": "celsius"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result}],
            },
        ]

    answer = await client.messages.create(
        model=MODEL,
        messages=conversation("Sunny and 22 degrees celsius."),
        tools=[WEATHER],
        max_tokens=32,
        extra_body=DETERMINISTIC,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert _text(answer.content).strip()
    # The tool's result is part of the prompt the model answered.
    with_result = await client.messages.count_tokens(
        model=MODEL, messages=conversation("Sunny and 22 degrees celsius."), tools=[WEATHER]
    )
    without = await client.messages.count_tokens(
        model=MODEL, messages=conversation(""), tools=[WEATHER]
    )
    assert with_result.input_tokens == _prompt_size(answer.usage)
    assert with_result.input_tokens > without.input_tokens


async def test_errors_raise_the_sdks_own_exceptions(
    client: anthropic.AsyncAnthropic, stack: LocalStack
) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        await client.messages.create(
            model="ai/no-such-model",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=8,
        )
    assert isinstance(not_found.value.body, dict)
    assert not_found.value.body["error"]["type"] == "not_found_error"

    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(  # type: ignore[call-overload]
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=anthropic.omit,  # the SDK then leaves the field out of the body
        )
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }

    with pytest.raises(anthropic.BadRequestError, match="multimodal projector"):
        await client.messages.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        },
                        {"type": "text", "text": "What is this?"},
                    ],
                }
            ],
            max_tokens=8,
        )

    # The same route under DMR's prefixes, with Anthropic's headers, which are accepted.
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as http:
        response = await http.post(
            "/v1/messages/count_tokens",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
            headers={"anthropic-version": "2023-06-01", "x-api-key": "anything"},
        )
    assert response.status_code == 200
    assert response.json()["input_tokens"] > 0
