"""llama-server's chat chunks -> the Responses API's event sequence (ResponseEvents, no I/O)."""

from __future__ import annotations

from typing import Any

import orjson

from services.gateway.openai.responses_request import parse_create
from services.gateway.openai.responses_stream import ResponseEvents
from services.gateway.openai.responses_translate import new_response


def _events(*chunks: dict[str, Any]) -> tuple[list[dict[str, Any]], ResponseEvents]:
    response = new_response(parse_create({"model": "m", "input": "hi"}), "resp_1", 1)
    translator = ResponseEvents(response)
    events = translator.start()
    for chunk in chunks:
        events += translator.feed(chunk)
    return events, translator


def _delta(index: int = 0, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _call(index: int, arguments: str, **first: str) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if first:
        call.update(id=first["id"], type="function")
        call["function"]["name"] = first["name"]
    return _delta(tool_calls=[call])


def test_a_text_answer_is_the_full_event_sequence() -> None:
    events, translator = _events(
        _delta(role="assistant", content=None),
        _delta(content="Hel"),
        _delta(content="lo"),
        _delta(finish="stop"),
        _usage(7, 2),
    )
    events += translator.finish()
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    item_id = events[2]["item"]["id"]
    assert all(event["item_id"] == item_id for event in events[3:8])
    assert [event["delta"] for event in events[4:6]] == ["Hel", "lo"]
    assert events[6]["text"] == "Hello"
    assert events[8]["item"]["content"][0]["text"] == "Hello"
    final = events[-1]["response"]
    assert final == translator.final_response
    assert final["status"] == "completed"
    assert final["output"] == [events[8]["item"]]
    assert final["usage"]["input_tokens"] == 7 and final["usage"]["output_tokens"] == 2
    # Every event is JSON the client can parse.
    assert all(orjson.loads(orjson.dumps(event)) == event for event in events)


def test_text_then_two_tool_calls() -> None:
    events, translator = _events(
        _delta(content="Checking."),
        _call(0, "", id="call_a", name="get_weather"),
        _call(0, '{"city":'),
        _call(1, '{"city": "Oslo"}', id="call_b", name="get_time"),
        _call(0, ' "Rome"}'),
        _delta(finish="tool_calls"),
    )
    events += translator.finish()
    kinds = [event["type"] for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        # The text closes when the first call starts.
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = [event for event in events if event["type"] == "response.output_item.added"]
    assert [event["output_index"] for event in added] == [0, 1, 2]
    assert added[1]["item"]["call_id"] == "call_a" and added[1]["item"]["name"] == "get_weather"
    done = [event for event in events if event["type"] == "response.function_call_arguments.done"]
    assert [(event["name"], event["arguments"]) for event in done] == [
        ("get_weather", '{"city": "Rome"}'),
        ("get_time", '{"city": "Oslo"}'),
    ]
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "function_call"]
    assert [item["call_id"] for item in output[1:]] == ["call_a", "call_b"]
    assert all(item["status"] == "completed" for item in output)


def test_the_token_limit_ends_with_response_incomplete() -> None:
    events, translator = _events(_delta(content="Once upon"), _delta(finish="length"))
    events += translator.finish()
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


def test_an_empty_answer_completes_with_no_output() -> None:
    events, translator = _events(_delta(finish="stop"))
    events += translator.finish()
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert events[-1]["response"]["output"] == []


def test_a_failure_mid_stream_ends_with_error_and_response_failed() -> None:
    events, translator = _events(_delta(content="Part"), _call(0, '{"a"', id="c1", name="f"))
    events += translator.fail("worker failed: boom")
    assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
    error, failed = events[-2:]
    assert error["message"] == "worker failed: boom" and error["code"] == "server_error"
    response = failed["response"]
    assert response["status"] == "failed"
    assert response["error"] == {"code": "server_error", "message": "worker failed: boom"}
    assert [item["status"] for item in response["output"]] == ["completed", "incomplete"]
    assert response["output"][1]["arguments"] == '{"a"'
    assert translator.final_response == response
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


def test_other_choices_and_unknown_fields_are_ignored() -> None:
    events, translator = _events(
        _delta(index=1, content="second choice"),
        _delta(content="first", reasoning_content="thinking"),
        {"object": "chat.completion.chunk"},
    )
    events += translator.finish()
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "first"
