"""Responses API requests -> chat completions bodies, chat answers -> Response objects, and the
object `tool_choice` rewrite shared with the chat completions route (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway import errors
from services.gateway.openai.responses_request import parse_create
from services.gateway.openai.responses_translate import (
    chat_body,
    new_response,
    response_from_chat,
)
from services.gateway.openai.tool_choice import narrow_tool_choice, rewrite_chat_tool_choice

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "get_weather", "description": "Weather", "parameters": CITY},
    {"type": "function", "name": "get_time", "parameters": CITY},
]


def _request(**fields: Any) -> dict[str, Any]:
    return {"model": "ai/smollm2", "input": "hi", **fields}


def test_a_string_input_is_one_user_message() -> None:
    created = parse_create(_request(input="Hello"))
    (item,) = created.input_items
    assert item["type"] == "message" and item["role"] == "user"
    assert item["content"] == [{"type": "input_text", "text": "Hello"}]
    assert item["id"].startswith("msg_") and item["status"] == "completed"
    body = chat_body(created)
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert body["model"] == "ai/smollm2" and body["stream"] is False
    assert "stream_options" not in body and "tools" not in body


def test_items_become_chat_messages_in_order() -> None:
    created = parse_create(
        _request(
            instructions="Be brief.",
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "message", "role": "assistant", "content": "Checking."},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city": "Rome"}',
                },
                {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": {}},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2", "output": "noon"},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "And"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                    ],
                },
            ],
        )
    )
    assert chat_body(created)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        },
    ]


def test_history_comes_after_the_instructions_and_before_the_input() -> None:
    history = (
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "uno", "annotations": []}],
        },
    )
    body = chat_body(parse_create(_request(instructions="sys", input="two")), history)
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "sys"),
        ("user", "one"),
        ("assistant", "uno"),
        ("user", "two"),
    ]


def test_parameters_map_onto_chat_completions() -> None:
    created = parse_create(
        _request(
            max_output_tokens=16,
            temperature=0,
            top_p=0.5,
            seed=7,
            user="u1",
            stream=True,
            reasoning={"effort": "none"},
            parallel_tool_calls=False,
            tools=TOOLS,
            text={
                "format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}
            },
        )
    )
    body = chat_body(created)
    assert body["max_tokens"] == 16 and body["temperature"] == 0.0 and body["top_p"] == 0.5
    assert body["seed"] == 7 and body["user"] == "u1" and body["reasoning_effort"] == "none"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["parallel_tool_calls"] is False and body["tool_choice"] == "auto"
    assert body["tools"][0] == {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": CITY},
    }
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": CITY, "strict": True},
    }
    assert "max_output_tokens" not in body and "text" not in body


def test_json_object_format_and_chat_shaped_tools_are_accepted() -> None:
    created = parse_create(
        _request(
            text={"format": {"type": "json_object"}},
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    )
    body = chat_body(created)
    assert body["response_format"] == {"type": "json_object"}
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
        }
    ]


@pytest.mark.parametrize(
    ("choice", "names", "mode"),
    [
        ({"type": "function", "name": "get_time"}, ["get_time"], "required"),
        ({"type": "function", "function": {"name": "get_weather"}}, ["get_weather"], "required"),
        (
            {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "get_time"}],
            },
            ["get_time"],
            "auto",
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
            ["get_weather"],
            "required",
        ),
        ("none", ["get_weather", "get_time"], "none"),
    ],
    ids=["responses-function", "chat-function", "responses-allowed", "chat-allowed", "string"],
)
def test_an_object_tool_choice_narrows_the_tools(choice: Any, names: list[str], mode: str) -> None:
    body = chat_body(parse_create(_request(tools=TOOLS, tool_choice=choice)))
    assert [tool["function"]["name"] for tool in body["tools"]] == names
    assert body["tool_choice"] == mode


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "get_time"}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ],
    ids=["absent-function", "no-tools", "hosted-type", "empty-allowed", "bad-string"],
)
def test_bad_tool_choices_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        chat_body(parse_create(_request(**fields)))
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ([], None),
        ({"input": "hi"}, "model"),
        ({"model": "m"}, "input"),
        (_request(input=42), "input"),
        (_request(input=["text"]), "input"),
        (_request(input=[{"type": "item_reference", "id": "x"}]), "input"),
        (_request(input=[{"role": "robot", "content": "x"}]), "input"),
        (_request(input=[{"role": "user", "content": [{"type": "input_file"}]}]), "input"),
        (_request(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]), "input"),
        (_request(tools=[{"type": "web_search"}]), "tools"),
        (_request(tools=[{"type": "function"}]), "tools"),
        (_request(max_output_tokens=0), "max_output_tokens"),
        (_request(temperature="hot"), "temperature"),
        (_request(stream="yes"), "stream"),
        (_request(text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema"),
        (_request(text={"format": {"type": "xml"}}), "text.format"),
        (_request(background=True), "background"),
        (_request(conversation="conv_1"), "conversation"),
    ],
    ids=[
        "not-object",
        "no-model",
        "no-input",
        "input-number",
        "input-strings",
        "item-reference",
        "bad-role",
        "file-part",
        "call-without-id",
        "hosted-tool",
        "unnamed-tool",
        "zero-tokens",
        "temperature-string",
        "stream-string",
        "schema-missing",
        "unknown-format",
        "background",
        "conversation",
    ],
)
def test_malformed_requests_name_the_field(payload: Any, param: str | None) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse_create(payload)
    assert caught.value.param == param
    assert caught.value.status_code == 400


def test_store_defaults_to_true() -> None:
    assert parse_create(_request()).store is True
    assert parse_create(_request(store=False)).store is False


def _chat_answer(message: dict[str, Any], finish: str, **usage: int) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": usage.get("prompt", 10),
            "completion_tokens": usage.get("completion", 5),
            "total_tokens": usage.get("prompt", 10) + usage.get("completion", 5),
            "prompt_tokens_details": {"cached_tokens": usage.get("cached", 0)},
        },
    }


def _skeleton(**fields: Any) -> dict[str, Any]:
    return new_response(parse_create(_request(**fields)), "resp_1", 1_700_000_000)


def test_new_response_echoes_the_request() -> None:
    response = _skeleton(
        instructions="sys", max_output_tokens=9, metadata={"k": "v"}, tools=TOOLS[:1], store=False
    )
    assert response["id"] == "resp_1" and response["object"] == "response"
    assert response["status"] == "in_progress" and response["output"] == []
    assert response["instructions"] == "sys" and response["max_output_tokens"] == 9
    assert response["metadata"] == {"k": "v"} and response["store"] is False
    assert response["tools"][0]["name"] == "get_weather"
    assert response["tool_choice"] == "auto" and response["parallel_tool_calls"] is True
    assert response["text"] == {"format": {"type": "text"}}


def test_a_text_answer_becomes_a_message_item() -> None:
    answer = _chat_answer({"content": "Hello!"}, "stop", prompt=12, completion=3, cached=4)
    response = response_from_chat(_skeleton(), answer)
    assert response["status"] == "completed" and response["incomplete_details"] is None
    (item,) = response["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["status"] == "completed" and item["id"].startswith("msg_")
    assert item["content"] == [
        {"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}
    ]
    assert response["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }


def test_tool_calls_become_function_call_items_after_the_text() -> None:
    calls = [
        {"id": "abc", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city":"x"}'}},
    ]
    answer = _chat_answer({"content": "Let me see.", "tool_calls": calls}, "tool_calls")
    output = response_from_chat(_skeleton(), answer)["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "function_call"]
    assert output[1]["call_id"] == "abc" and output[1]["name"] == "get_time"
    assert output[1]["arguments"] == "{}" and output[1]["id"].startswith("fc_")
    assert output[2]["call_id"].startswith("call_")  # llama-server gave none: one is made up
    assert output[2]["arguments"] == '{"city":"x"}'


def test_the_token_limit_makes_the_response_incomplete() -> None:
    response = response_from_chat(_skeleton(), _chat_answer({"content": "Hel"}, "length"))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_an_answer_without_choices_is_an_upstream_error() -> None:
    with pytest.raises(errors.UpstreamError):
        response_from_chat(_skeleton(), {"object": "chat.completion", "choices": []})


def test_the_chat_rewrite_leaves_string_choices_alone() -> None:
    chat_tools = [{"type": "function", "function": {"name": "a"}}]
    assert rewrite_chat_tool_choice({"tools": chat_tools, "tool_choice": "required"}) is None
    assert rewrite_chat_tool_choice({"tool_choice": {"type": "function", "name": "a"}}) is None
    assert rewrite_chat_tool_choice({"messages": []}) is None
    rewritten = rewrite_chat_tool_choice(
        {
            "model": "m",
            "tools": [*chat_tools, {"type": "function", "function": {"name": "b"}}],
            "tool_choice": {"type": "function", "function": {"name": "a"}},
        }
    )
    assert rewritten == {"model": "m", "tools": chat_tools, "tool_choice": "required"}


def test_narrowing_keeps_the_tools_order_and_unknown_shapes_out() -> None:
    tools: list[Any] = [
        {"type": "function", "function": {"name": "b"}},
        "junk",
        {"type": "function", "function": {"name": "a"}},
    ]
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
    }
    narrowed, mode = narrow_tool_choice(tools, choice)
    assert narrowed == [tools[0], tools[2]] and mode == "required"
