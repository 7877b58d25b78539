"""Ollama requests -> OpenAI bodies: options, format, keep_alive, think, messages, refusals."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from modelrunner.v1 import common_pb2
from services.gateway import errors
from services.gateway.ollama.models import ChatRequest, GenerateRequest, Message
from services.gateway.ollama.options import (
    chat_response_format,
    completion_json_schema,
    keep_alive_seconds,
    sampling_fields,
    thinking_fields,
)
from services.gateway.ollama.translate import (
    chat_request,
    embeddings_request,
    generate_request,
    openai_messages,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 16).decode()
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"temperature": 0}, {"temperature": 0.0}),
        ({"top_p": 0.9, "top_k": 40, "min_p": 0.05}, {"top_p": 0.9, "top_k": 40, "min_p": 0.05}),
        ({"num_predict": 12}, {"max_tokens": 12}),
        ({"num_predict": -1}, {}),
        ({"num_predict": -2}, {}),
        ({"stop": ["\n", "User:"]}, {"stop": ["\n", "User:"]}),
        ({"stop": "END"}, {"stop": ["END"]}),
        ({"seed": 42}, {"seed": 42}),
        ({"seed": 42.0}, {"seed": 42}),
        (
            {"repeat_penalty": 1.1, "repeat_last_n": 64},
            {"repeat_penalty": 1.1, "repeat_last_n": 64},
        ),
        (
            {"presence_penalty": 0.5, "frequency_penalty": 0.25},
            {"presence_penalty": 0.5, "frequency_penalty": 0.25},
        ),
        ({"typical_p": 0.7}, {"typical_p": 0.7}),
        (
            {"mirostat": 2, "mirostat_tau": 5, "mirostat_eta": 0.1},
            {"mirostat": 2, "mirostat_tau": 5.0, "mirostat_eta": 0.1},
        ),
        ({"num_keep": 4}, {"n_keep": 4}),
        # Load-time options, removed samplers, unknown keys and nulls are not sent.
        ({"num_ctx": 4096, "num_gpu": 1, "num_thread": 2, "use_mmap": False}, {}),
        ({"tfs_z": 1.0, "penalize_newline": True, "no_such_option": 1}, {}),
        ({"temperature": None}, {}),
        (None, {}),
    ],
)
def test_options_map_to_llama_server_fields(
    options: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    assert sampling_fields(options) == expected


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_k": 4.5}, "top_k"),
        ({"num_predict": "10"}, "num_predict"),
        ({"stop": [1, 2]}, "stop"),
        ({"seed": float("inf")}, "seed"),
    ],
)
def test_option_of_the_wrong_type_is_a_400_naming_it(options: dict[str, Any], named: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=named) as raised:
        sampling_fields(options)
    assert raised.value.status_code == 400


def test_format_json_and_schema() -> None:
    assert chat_response_format("json") == {"type": "json_object"}
    assert chat_response_format(SCHEMA) == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA},
    }
    assert chat_response_format("") is None
    assert chat_response_format(None) is None
    assert completion_json_schema("json") == {"type": "object"}
    assert completion_json_schema(SCHEMA) == SCHEMA
    with pytest.raises(errors.InvalidRequest, match="format"):
        chat_response_format("yaml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        (0, 0.0),
        ("0", 0.0),
        (300, 300.0),
        (2.5, 2.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        (-1, -1.0),
        ("-1", -1.0),
        ("-5m", -1.0),
    ],
)
def test_keep_alive_durations(value: object, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [1], float("nan")])
def test_bad_keep_alive_is_a_400(value: object) -> None:
    with pytest.raises(errors.InvalidRequest, match="keep_alive"):
        keep_alive_seconds(value)


def test_think_maps_to_the_chat_template_switch() -> None:
    assert thinking_fields(None) == {}
    assert thinking_fields(False) == {"chat_template_kwargs": {"enable_thinking": False}}
    assert thinking_fields("low") == {
        "chat_template_kwargs": {"enable_thinking": True},
        "reasoning_effort": "low",
    }
    with pytest.raises(errors.InvalidRequest, match="think"):
        thinking_fields("maybe")


def test_chat_request_body() -> None:
    request = ChatRequest.model_validate(
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 8, "temperature": 0, "num_ctx": 99},
            "format": SCHEMA,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "logprobs": True,
            "top_logprobs": 2,
        }
    )
    translated = chat_request(request)
    assert translated.endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
    assert translated.payload == {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "max_tokens": 8,
        "temperature": 0.0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": SCHEMA},
        },
        "logprobs": True,
        "top_logprobs": 2,
        # Ollama streams by default; usage is asked for so the final object has its counts.
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_legacy_name_field_and_explicit_no_stream() -> None:
    request = ChatRequest.model_validate({"name": "ai/smollm2", "stream": False})
    assert request.model_name == "ai/smollm2"
    payload = chat_request(request).payload
    assert payload["stream"] is False
    assert "stream_options" not in payload


def test_messages_with_images_tool_calls_and_tool_results() -> None:
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="What is this?", images=[PNG, JPEG]),
        Message.model_validate(
            {
                "role": "assistant",
                "content": "",
                "thinking": "the user wants weather",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "time", "arguments": {"zone": "CET"}}},
                ],
            }
        ),
        # Answered out of order: tied to the calls by name.
        Message(role="tool", content="12:00", tool_name="time"),
        Message(role="tool", content="sunny", tool_name="weather"),
    ]
    converted = openai_messages(messages)

    assert converted[0] == {"role": "system", "content": "Be brief."}
    assert converted[1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
        ],
    }
    calls = converted[2]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["weather", "time"]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert all(call["type"] == "function" and call["id"] for call in calls)
    assert converted[2]["reasoning_content"] == "the user wants weather"
    assert converted[3]["tool_call_id"] == calls[1]["id"]
    assert converted[3]["name"] == "time"
    assert converted[4]["tool_call_id"] == calls[0]["id"]


def test_tool_result_without_a_name_answers_the_oldest_open_call() -> None:
    messages = [
        Message.model_validate(
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "a", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "b", "function": {"name": "g", "arguments": {}}},
                ],
            }
        ),
        Message(role="tool", content="1"),
        Message(role="tool", content="2"),
        Message(role="tool", content="3"),
    ]
    converted = openai_messages(messages)
    assert converted[0]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert [message.get("tool_call_id") for message in converted[1:]] == ["a", "b", None]


def test_images_must_be_base64() -> None:
    with pytest.raises(errors.InvalidRequest, match="base64"):
        openai_messages([Message(role="user", content="x", images=["not base64 at all!"])])


def test_generate_is_a_chat_with_system_and_prompt() -> None:
    request = GenerateRequest.model_validate(
        {
            "model": "smollm2",
            "prompt": "Why is the sky blue?",
            "system": "Answer in one word.",
            "format": "json",
            "options": {"seed": 7},
            "think": True,
        }
    )
    translated = generate_request(request)
    assert translated.endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
    assert translated.payload["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert translated.payload["response_format"] == {"type": "json_object"}
    assert translated.payload["seed"] == 7
    assert translated.payload["chat_template_kwargs"] == {"enable_thinking": True}


def test_raw_generate_is_a_plain_completion() -> None:
    request = GenerateRequest.model_validate(
        {
            "model": "smollm2",
            "prompt": "<|im_start|>user\nHi",
            "system": "ignored in raw mode",
            "raw": True,
            "format": SCHEMA,
            "stream": False,
            "options": {"num_predict": 3},
        }
    )
    translated = generate_request(request)
    assert translated.endpoint == common_pb2.ENDPOINT_KIND_COMPLETIONS
    assert translated.payload == {
        "model": "smollm2",
        "prompt": "<|im_start|>user\nHi",
        "max_tokens": 3,
        "json_schema": SCHEMA,
        "stream": False,
    }


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"suffix": "return x"}, "suffix"),
        ({"context": [1, 2, 3]}, "context"),
        ({"raw": True, "images": [PNG]}, "images"),
    ],
)
def test_generate_refuses_what_it_cannot_honour(fields: dict[str, Any], named: str) -> None:
    request = GenerateRequest.model_validate({"model": "m", "prompt": "p", **fields})
    with pytest.raises(errors.InvalidRequest) as raised:
        generate_request(request)
    assert raised.value.param == named


def test_embeddings_request() -> None:
    translated = embeddings_request("smollm2", ["a", "b"])
    assert translated.endpoint == common_pb2.ENDPOINT_KIND_EMBEDDINGS
    assert translated.payload == {
        "model": "smollm2",
        "input": ["a", "b"],
        "encoding_format": "float",
    }
