"""llama-server answers -> Ollama objects: text pieces, tool calls delivered whole, statistics."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway import errors
from services.gateway.ollama.answers import (
    Shape,
    StreamTranslator,
    ToolCalls,
    complete_answer,
    done_reason,
    statistics,
)

NOW = "2025-01-01T00:00:00.000000Z"
USAGE = {"prompt_tokens": 31, "completion_tokens": 5, "total_tokens": 36}
TIMINGS = {"prompt_n": 7, "cache_n": 24, "prompt_ms": 81.5, "predicted_n": 5, "predicted_ms": 27.25}


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def finish(reason: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


def usage_event() -> dict[str, Any]:
    return {"choices": [], "usage": USAGE, "timings": TIMINGS}


def call_delta(index: int, *, id: str = "", name: str = "", arguments: str = "") -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name:
        function["name"] = name
    entry: dict[str, Any] = {"index": index, "function": function}
    if id:
        entry.update(id=id, type="function")
    return entry


def translate(
    events: list[dict[str, Any]], shape: Shape = Shape.CHAT, *, chat_events: bool = True
) -> list[dict[str, Any]]:
    translator = StreamTranslator(
        model="smollm2", shape=shape, chat_events=chat_events, now=lambda: NOW
    )
    objects = [piece for event in events for piece in translator.feed(event)]
    return objects + translator.finish(200_000_000)


def test_chat_stream_pieces_and_final_statistics() -> None:
    objects = translate(
        [
            delta(role="assistant", content=None),
            delta(content="Hello"),
            delta(content="!"),
            finish("length"),
            usage_event(),
        ]
    )
    assert objects[:2] == [
        {
            "model": "smollm2",
            "created_at": NOW,
            "message": {"role": "assistant", "content": "Hello"},
            "done": False,
        },
        {
            "model": "smollm2",
            "created_at": NOW,
            "message": {"role": "assistant", "content": "!"},
            "done": False,
        },
    ]
    assert objects[2] == {
        "model": "smollm2",
        "created_at": NOW,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
        "total_duration": 200_000_000,
        "load_duration": 200_000_000 - 81_500_000 - 27_250_000,
        "prompt_eval_count": 31,
        "prompt_eval_duration": 81_500_000,
        "eval_count": 5,
        "eval_duration": 27_250_000,
    }
    assert len(objects) == 3


def test_generate_stream_from_chat_events_and_from_text_completions() -> None:
    from_chat = translate([delta(content="Hi"), finish("stop")], Shape.GENERATE)
    from_text = translate(
        [
            {"choices": [{"index": 0, "text": "Hi", "finish_reason": None}]},
            {
                "choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
                "usage": USAGE,
                "timings": TIMINGS,
            },
        ],
        Shape.GENERATE,
        chat_events=False,
    )
    for objects in (from_chat, from_text):
        assert objects[0] == {
            "model": "smollm2",
            "created_at": NOW,
            "response": "Hi",
            "done": False,
        }
        assert objects[-1]["response"] == ""
        assert objects[-1]["done"] is True
        assert objects[-1]["done_reason"] == "stop"
    assert from_text[-1]["eval_count"] == 5


def test_thinking_is_passed_apart() -> None:
    objects = translate([delta(reasoning_content="hmm"), delta(content="42"), finish("stop")])
    assert objects[0]["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}
    assert objects[1]["message"] == {"role": "assistant", "content": "42"}


def test_tool_call_fragments_are_delivered_whole_in_one_message() -> None:
    events = [
        delta(role="assistant", content=None),
        delta(tool_calls=[call_delta(0, id="call_a", name="get_weather", arguments="")]),
        delta(tool_calls=[call_delta(0, arguments='{"ci')]),
        delta(tool_calls=[call_delta(0, arguments='ty": "Par')]),
        delta(tool_calls=[call_delta(0, arguments='is"}')]),
        delta(tool_calls=[call_delta(1, id="call_b", name="get_time", arguments='{"zone"')]),
        delta(tool_calls=[call_delta(1, arguments=': "CET", "n": [1, 2]}')]),
        finish("tool_calls"),
        usage_event(),
    ]
    objects = translate(events)

    # Nothing is passed on while the fragments arrive: one message with both calls, parsed,
    # then the final object.
    assert len(objects) == 2
    assert objects[0]["done"] is False
    assert objects[0]["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_a",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "call_b",
                "function": {
                    "index": 1,
                    "name": "get_time",
                    "arguments": {"zone": "CET", "n": [1, 2]},
                },
            },
        ],
    }
    assert objects[1]["done"] is True
    assert objects[1]["done_reason"] == "stop"


def test_interleaved_call_fragments_are_joined_by_index() -> None:
    calls = ToolCalls()
    calls.add([call_delta(1, id="b", name="g", arguments='{"y":')])
    calls.add([call_delta(0, id="a", name="f", arguments='{"x":')])
    calls.add([call_delta(1, arguments=" 2}"), call_delta(0, arguments=" 1}")])
    assert [(c["id"], c["function"]["arguments"]) for c in calls.complete()] == [
        ("a", {"x": 1}),
        ("b", {"y": 2}),
    ]


def test_call_without_arguments_has_an_empty_object() -> None:
    calls = ToolCalls()
    calls.add([call_delta(0, name="now")])
    assert calls.complete() == [{"function": {"index": 0, "name": "now", "arguments": {}}}]


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", "not json"])
def test_tool_call_arguments_that_are_not_an_object_are_an_error(arguments: str) -> None:
    events = [
        delta(tool_calls=[call_delta(0, id="c", name="f", arguments=arguments)]),
        finish("length"),
    ]
    with pytest.raises(errors.UpstreamError, match="'f'"):
        translate(events)


def test_stream_that_ends_before_the_model_finished_is_an_error() -> None:
    with pytest.raises(errors.UpstreamError, match="ended before"):
        translate([delta(content="Hel")])


def test_logprobs_are_translated() -> None:
    logprobs = {
        "content": [
            {
                "id": 1,
                "token": "Hi",
                "bytes": [72, 105],
                "logprob": -0.5,
                "top_logprobs": [{"id": 1, "token": "Hi", "logprob": -0.5}],
            }
        ]
    }
    event = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": logprobs}]}
    [piece, _] = translate([event, finish("stop")])
    assert piece["logprobs"] == [
        {
            "token": "Hi",
            "logprob": -0.5,
            "bytes": [72, 105],
            "top_logprobs": [{"token": "Hi", "logprob": -0.5}],
        }
    ]


def test_complete_chat_answer_with_tool_calls() -> None:
    answer = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        }
                    ],
                },
            }
        ],
        "usage": USAGE,
        "timings": TIMINGS,
    }
    result = complete_answer(
        answer, model="m", shape=Shape.CHAT, chat_events=True, created_at=NOW, total_ns=10**9
    )
    assert result["message"]["tool_calls"] == [
        {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}
    ]
    assert result["done"] is True
    assert result["done_reason"] == "stop"
    assert result["eval_count"] == 5
    assert result["prompt_eval_count"] == 31


def test_complete_text_answer() -> None:
    answer = {"choices": [{"index": 0, "text": "once", "finish_reason": "length"}]}
    result = complete_answer(
        answer, model="m", shape=Shape.GENERATE, chat_events=False, created_at=NOW, total_ns=5
    )
    assert result["response"] == "once"
    assert result["done_reason"] == "length"
    # No usage or timings from the server: counts are 0, the whole time is "load".
    assert result["eval_count"] == 0
    assert result["load_duration"] == 5


def test_statistics_fall_back_to_timings_and_never_go_negative() -> None:
    stats = statistics(None, TIMINGS, total_ns=1000)
    assert stats["prompt_eval_count"] == 31
    assert stats["eval_count"] == 5
    assert stats["load_duration"] == 0


@pytest.mark.parametrize(
    ("finish_reason", "reason"),
    [("stop", "stop"), ("length", "length"), ("tool_calls", "stop"), (None, "stop")],
)
def test_done_reasons(finish_reason: str | None, reason: str) -> None:
    assert done_reason(finish_reason) == reason
