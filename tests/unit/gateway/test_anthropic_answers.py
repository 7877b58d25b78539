"""llama-server's non-streamed chat answers -> Anthropic Messages."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway import errors
from services.gateway.anthropic.answers import to_message, usage
from services.gateway.anthropic.models import parse_messages
from services.gateway.anthropic.translate import Translation, chat_request

WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {"name": "get_time", "input_schema": {"type": "object"}}


def translation(**fields: Any) -> Translation:
    return chat_request(
        parse_messages(
            {
                "model": "ai/smollm2",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": "Hi"}],
                **fields,
            }
        )
    )


def completion(
    message: dict[str, Any], finish: str = "stop", extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": 40,
            "completion_tokens": 7,
            "total_tokens": 47,
            "prompt_tokens_details": {"cached_tokens": 30},
        },
        **(extra or {}),
    }


def message(answer: dict[str, Any], translated: Translation | None = None) -> dict[str, Any]:
    return to_message(
        answer, translated or translation(), model="ai/smollm2", message_id="msg_test"
    )


def test_text_answer_has_anthropics_shape_and_usage_split() -> None:
    assert message(completion({"content": "Hello there."})) == {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "ai/smollm2",
        "content": [{"type": "text", "text": "Hello there."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 7,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 30,
        },
    }


def test_length_is_max_tokens() -> None:
    assert message(completion({"content": "Hel"}, "length"))["stop_reason"] == "max_tokens"


def test_stop_sequence_is_read_from_llama_servers_verbose_extension() -> None:
    translated = translation(stop_sequences=["four", "six"])
    verbose = {"__verbose": {"stop_type": "word", "stopping_word": "four"}}
    answer = message(completion({"content": "one two three "}, extra=verbose), translated)
    assert answer["stop_reason"] == "stop_sequence"
    assert answer["stop_sequence"] == "four"
    # The template's own end-of-turn string is not one of the client's sequences.
    template = {"__verbose": {"stop_type": "word", "stopping_word": "<|im_end|>"}}
    answer = message(completion({"content": "one"}, extra=template), translated)
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("end_turn", None)
    eos = {"__verbose": {"stop_type": "eos", "stopping_word": ""}}
    assert (
        message(completion({"content": "one"}, extra=eos), translated)["stop_reason"] == "end_turn"
    )


def test_native_tool_calls_become_tool_use_blocks() -> None:
    answer = message(
        completion(
            {
                "content": "Checking.",
                "reasoning_content": "The user wants weather.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"type": "function", "function": {"name": "get_time", "arguments": ""}},
                ],
            },
            "tool_calls",
        ),
        translation(tools=[WEATHER, TIME]),
    )
    assert answer["stop_reason"] == "tool_use"
    thinking, text, weather, time = answer["content"]
    assert thinking == {"type": "thinking", "thinking": "The user wants weather.", "signature": ""}
    assert text == {"type": "text", "text": "Checking."}
    assert weather == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert time["name"] == "get_time"
    assert time["input"] == {}
    assert time["id"].startswith("toolu_")


def test_malformed_native_arguments_are_an_upstream_error() -> None:
    broken = completion(
        {"tool_calls": [{"function": {"name": "get_weather", "arguments": "{oops"}}]},
        "tool_calls",
    )
    with pytest.raises(errors.UpstreamError, match="not JSON"):
        message(broken, translation(tools=[WEATHER]))


def test_forced_tool_output_is_the_calls_input() -> None:
    forced = translation(tools=[WEATHER, TIME], tool_choice={"type": "tool", "name": "get_weather"})
    answer = message(completion({"content": '{\n  "city": "Paris"\n}'}), forced)
    assert answer["stop_reason"] == "tool_use"
    [call] = answer["content"]
    assert call["type"] == "tool_use"
    assert call["name"] == "get_weather"
    assert call["input"] == {"city": "Paris"}
    assert call["id"].startswith("toolu_")


def test_forced_choice_among_several_reads_name_and_input() -> None:
    forced = translation(tools=[WEATHER, TIME], tool_choice={"type": "any"})
    answer = message(
        completion({"content": '{"input": {"zone": "UTC"}, "name": "get_time"}'}), forced
    )
    [call] = answer["content"]
    assert (call["name"], call["input"]) == ("get_time", {"zone": "UTC"})


def test_forced_output_cut_short_stays_text() -> None:
    forced = translation(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"})
    answer = message(completion({"content": '{"city": "Par'}, "length"), forced)
    assert answer["stop_reason"] == "max_tokens"
    assert answer["content"] == [{"type": "text", "text": '{"city": "Par'}]


def test_the_repeated_prefill_is_not_part_of_the_answer() -> None:
    prefilled = translation(
        messages=[
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "The capital is"},
        ]
    )
    repeated = message(completion({"content": "The capital is Paris."}), prefilled)
    assert repeated["content"] == [{"type": "text", "text": " Paris."}]
    # A llama-server that does not repeat it loses nothing.
    continued = message(completion({"content": " Paris."}), prefilled)
    assert continued["content"] == [{"type": "text", "text": " Paris."}]


def test_empty_answer_has_no_blocks() -> None:
    assert message(completion({"content": ""}))["content"] == []


def test_answer_without_choices_is_an_upstream_error() -> None:
    with pytest.raises(errors.UpstreamError):
        message({"object": "chat.completion", "choices": []})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, (0, 0, 0)),
        ({"prompt_tokens": 12, "completion_tokens": 3}, (12, 3, 0)),
        (
            {
                "prompt_tokens": 12,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 99},
            },
            (0, 3, 12),
        ),
        ({"prompt_tokens": -1, "completion_tokens": "3"}, (0, 0, 0)),
    ],
)
def test_usage(source: object, expected: tuple[int, int, int]) -> None:
    counts = usage(source)
    assert (
        counts["input_tokens"],
        counts["output_tokens"],
        counts["cache_read_input_tokens"],
    ) == expected
