"""Anthropic Messages requests -> llama-server's OpenAI chat requests, and their validation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.gateway import errors
from services.gateway.anthropic.models import parse_count_tokens, parse_messages
from services.gateway.anthropic.translate import (
    chat_request,
    count_tokens_request,
    has_images,
)

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}


def request(**fields: Any) -> dict[str, Any]:
    return {
        "model": "ai/smollm2",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "Hi"}],
        **fields,
    }


def translate(**fields: Any) -> dict[str, Any]:
    return chat_request(parse_messages(request(**fields))).body


def test_plain_message_maps_model_messages_and_sampling() -> None:
    body = translate(
        system="Be brief.",
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        metadata={"user_id": "user-7"},
    )
    assert body == {
        "model": "ai/smollm2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 32,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        # The affinity key routing_hints reads.
        "user": "user-7",
    }


def test_system_blocks_are_joined_and_unknown_fields_ignored() -> None:
    body = translate(
        system=[
            {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Two."},
        ],
        service_tier="auto",
    )
    assert body["messages"][0] == {"role": "system", "content": "One.\nTwo."}
    assert "service_tier" not in body


def test_streaming_asks_for_usage_and_prompt_progress() -> None:
    body = translate(stream=True)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["return_progress"] is True


def test_stop_sequences_ask_llama_server_which_one_stopped_it() -> None:
    translation = chat_request(parse_messages(request(stop_sequences=["END", "\n\n"])))
    assert translation.body["stop"] == ["END", "\n\n"]
    assert translation.body["verbose"] is True
    assert translation.stop_sequences == ("END", "\n\n")
    assert "verbose" not in translate()


def test_consecutive_turns_of_one_role_are_merged() -> None:
    body = translate(
        messages=[
            {"role": "user", "content": "One"},
            {"role": "user", "content": [{"type": "text", "text": "Two"}]},
            {"role": "assistant", "content": "Three"},
        ]
    )
    assert body["messages"] == [
        {"role": "user", "content": "One\nTwo"},
        {"role": "assistant", "content": "Three"},
    ]


def test_a_final_assistant_turn_is_a_prefill_to_continue() -> None:
    messages = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": [{"type": "text", "text": "The capital is"}]},
    ]
    translation = chat_request(parse_messages(request(messages=messages)))
    assert translation.body["messages"][-1] == {"role": "assistant", "content": "The capital is"}
    assert translation.prefill == "The capital is"
    assert chat_request(parse_messages(request())).prefill == ""


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages() -> None:
    body = translate(
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should call it.", "signature": "x"},
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Also, thanks."},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "timeout"}],
                        "is_error": True,
                    },
                ],
            },
        ],
    )
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        # Tool messages come right after the call, before the rest of the user's turn.
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout"},
        {"role": "user", "content": "Also, thanks."},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "Weather in a city",
            },
        }
    ]
    assert body["tool_choice"] == "auto"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
)
def test_free_tool_choices_offer_the_tools_natively(
    choice: dict[str, Any], expected: dict[str, Any]
) -> None:
    translation = chat_request(parse_messages(request(tools=[WEATHER, TIME], tool_choice=choice)))
    assert translation.forced_tools == ()
    assert [tool["function"]["name"] for tool in translation.body["tools"]] == [
        "get_weather",
        "get_time",
    ]
    for key, value in expected.items():
        assert translation.body[key] == value
    assert "response_format" not in translation.body


def test_a_named_tool_is_forced_with_its_schema_as_the_output_format() -> None:
    translation = chat_request(
        parse_messages(
            request(
                system="Be brief.",
                tools=[WEATHER, TIME],
                tool_choice={"type": "tool", "name": "get_weather"},
                stop_sequences=["}"],
            )
        )
    )
    body = translation.body
    assert translation.forced_tools == ("get_weather",)
    assert not translation.wrapped
    assert "tools" not in body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "tool_call", "schema": WEATHER["input_schema"]},
    }
    system = body["messages"][0]["content"]
    assert system.startswith("Be brief.\n\n")
    assert "`get_weather`" in system
    assert orjson.dumps(WEATHER["input_schema"]).decode() in system
    # A stop sequence must not cut the call's JSON short.
    assert "stop" not in body
    assert translation.stop_sequences == ()


def test_any_tool_among_several_is_forced_as_a_name_and_input_object() -> None:
    translation = chat_request(
        parse_messages(request(tools=[WEATHER, TIME], tool_choice={"type": "any"}))
    )
    assert translation.forced_tools == ("get_weather", "get_time")
    assert translation.wrapped
    schema = translation.body["response_format"]["json_schema"]["schema"]
    assert [branch["properties"]["name"] for branch in schema["anyOf"]] == [
        {"const": "get_weather"},
        {"const": "get_time"},
    ]
    assert schema["anyOf"][1]["properties"]["input"] == TIME["input_schema"]
    system = translation.body["messages"][0]["content"]
    assert "`get_weather`" in system
    assert "`get_time`" in system


def test_any_with_one_tool_is_that_tool_forced() -> None:
    translation = chat_request(parse_messages(request(tools=[TIME], tool_choice={"type": "any"})))
    assert translation.forced_tools == ("get_time",)
    assert translation.body["response_format"]["json_schema"]["schema"] == TIME["input_schema"]


def test_output_config_format_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for fields in (
        {"output_config": {"format": {"type": "json_schema", "schema": schema}}},
        {"output_format": {"type": "json_schema", "schema": schema}},
    ):
        assert translate(**fields)["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }


def test_images_become_image_url_parts() -> None:
    parsed = parse_messages(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                        },
                        {"type": "text", "text": "Compare them."},
                    ],
                }
            ]
        )
    )
    assert has_images(parsed)
    assert chat_request(parsed).body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "Compare them."},
            ],
        }
    ]
    assert not has_images(parse_messages(request()))


def test_thinking_switch_reaches_the_chat_template() -> None:
    enabled = translate(thinking={"type": "enabled", "budget_tokens": 1024})
    disabled = translate(thinking={"type": "disabled"})
    assert enabled["chat_template_kwargs"] == {"enable_thinking": True}
    assert disabled["chat_template_kwargs"] == {"enable_thinking": False}


def test_count_tokens_renders_the_same_prompt_for_one_token() -> None:
    fields = {
        "system": "Be brief.",
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    counted = count_tokens_request(parse_count_tokens(request(**fields)))
    sent = chat_request(parse_messages(request(**fields))).body
    assert counted["max_tokens"] == 1
    assert counted["messages"] == sent["messages"]
    assert counted["response_format"] == sent["response_format"]
    assert "stream" not in counted
    # count_tokens takes no max_tokens.
    parse_count_tokens({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": "32"}, "max_tokens: Input should be a valid integer"),
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"model": ""}, "model: String should have at least 1 character"),
        ({"messages": []}, "messages: List should have at least 1 item"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role: Input should be"),
        ({"temperature": "hot"}, "temperature: Input should be a valid number"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text: Field required",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0: Input tag 'document' found using 'type' does not match",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools.0: tool type 'web_search_20250305' is not supported",
        ),
        ({"tool_choice": {"type": "tool"}}, "tool_choice: tool_choice of type 'tool' needs"),
        ({"tool_choice": {"type": "any"}}, "tool_choice: type 'any' needs at least one tool"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
            "tool_choice: tool 'nope' is not one of the tools given",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools: tool names must be unique"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}],
                    }
                ]
            },
            "messages: an assistant turn cannot contain a 'tool_result' block",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}],
                    }
                ]
            },
            "messages: a user turn cannot contain a 'tool_use' block",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [
                                    {
                                        "type": "image",
                                        "source": {"type": "url", "url": "https://x/y.png"},
                                    }
                                ],
                            }
                        ],
                    }
                ]
            },
            "messages: images inside a tool_result are not supported",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "any"},
                "output_config": {"format": {"type": "json_schema", "schema": {}}},
            },
            "output_config.format cannot be combined",
        ),
    ],
)
def test_invalid_requests_are_refused_with_a_clear_message(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        chat_request(parse_messages(request(**fields)))
    assert refused.value.message.startswith(message), refused.value.message


def test_missing_max_tokens_is_named() -> None:
    body = request()
    del body["max_tokens"]
    with pytest.raises(errors.InvalidRequest, match=r"^max_tokens: Field required$"):
        parse_messages(body)
    with pytest.raises(errors.InvalidRequest, match="must be a JSON object"):
        parse_messages([body])
