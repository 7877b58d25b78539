"""llama-server's streamed chat chunks -> Anthropic's SSE event sequence."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.gateway import errors
from services.gateway.anthropic.models import parse_messages
from services.gateway.anthropic.stream import MessageStream
from services.gateway.anthropic.translate import Translation, chat_request

WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {"name": "get_time", "input_schema": {"type": "object"}}
USAGE = {
    "prompt_tokens": 39,
    "completion_tokens": 3,
    "prompt_tokens_details": {"cached_tokens": 24},
}


def translation(**fields: Any) -> Translation:
    return chat_request(
        parse_messages(
            {
                "model": "ai/smollm2",
                "max_tokens": 32,
                "stream": True,
                "messages": [{"role": "user", "content": "Hi"}],
                **fields,
            }
        )
    )


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse SSE bytes, checking each event's `event:` line names its data's type."""
    parsed = []
    assert data.endswith(b"\n\n")
    for raw in data.split(b"\n\n")[:-1]:
        event_line, data_line = raw.split(b"\n")
        name = event_line.removeprefix(b"event: ").decode()
        payload = orjson.loads(data_line.removeprefix(b"data: "))
        assert payload["type"] == name
        parsed.append((name, payload))
    return parsed


def run(
    translated: Translation, chunks: list[dict[str, Any]], max_buffer: int = 1 << 20
) -> list[tuple[str, dict[str, Any]]]:
    machine = MessageStream(
        translated, model="ai/smollm2", message_id="msg_1", max_buffer=max_buffer
    )
    out = b"".join(machine.feed(chunk) for chunk in chunks) + machine.finish()
    return events(out)


def test_text_stream_follows_anthropics_event_sequence() -> None:
    sequence = run(
        translation(),
        [
            {
                **delta(role="assistant", content=None),
                "prompt_progress": {"total": 39, "cache": 24, "processed": 24},
            },
            delta(content="Hel"),
            delta(content="lo"),
            delta("stop"),
            {"choices": [], "usage": USAGE},
        ],
    )
    assert [name for name, _ in sequence] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = sequence[0][1]["message"]
    assert start["id"] == "msg_1"
    assert start["content"] == []
    assert start["stop_reason"] is None
    # The prompt's size is known from the first chunk's progress, before any token.
    assert start["usage"]["input_tokens"] == 15
    assert start["usage"]["cache_read_input_tokens"] == 24
    assert sequence[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [payload["delta"] for name, payload in sequence if name == "content_block_delta"] == [
        {"type": "text_delta", "text": "Hel"},
        {"type": "text_delta", "text": "lo"},
    ]
    assert sequence[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 15,
            "output_tokens": 3,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 24,
        },
    }


def test_without_progress_message_start_reports_zero_and_message_delta_the_counts() -> None:
    sequence = run(translation(), [delta("length", content="Hi"), {"choices": [], "usage": USAGE}])
    assert sequence[0][1]["message"]["usage"]["input_tokens"] == 0
    final = sequence[-2][1]
    assert final["delta"]["stop_reason"] == "max_tokens"
    assert final["usage"]["input_tokens"] == 15


def test_stop_sequence_comes_from_the_last_chunks_verbose_field() -> None:
    sequence = run(
        translation(stop_sequences=["four"]),
        [
            delta(content="one two three "),
            {**delta("stop"), "__verbose": {"stop_type": "word", "stopping_word": "four"}},
        ],
    )
    assert sequence[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "four"}


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (["The capital is", " Paris."], [" Paris."]),
        (["The cap", "ital is Par", "is."], [" Par", "is."]),
        ([" Paris", "."], [" Paris", "."]),
        (["The cap"], ["The cap"]),
    ],
)
def test_the_repeated_prefill_is_held_back_and_dropped(
    deltas: list[str], expected: list[str]
) -> None:
    prefilled = translation(
        messages=[
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "The capital is"},
        ]
    )
    sequence = run(prefilled, [*(delta(content=text) for text in deltas), delta("stop")])
    texts = [
        payload["delta"]["text"] for name, payload in sequence if name == "content_block_delta"
    ]
    assert texts == expected


def test_thinking_then_text_are_two_blocks() -> None:
    sequence = run(
        translation(),
        [
            delta(reasoning_content="Hmm"),
            delta(reasoning_content="."),
            delta(content="Yes"),
            delta("stop"),
        ],
    )
    blocks = [(name, payload) for name, payload in sequence if name.startswith("content_block")]
    assert [(name, payload["index"]) for name, payload in blocks] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    assert blocks[0][1]["content_block"]["type"] == "thinking"
    assert blocks[1][1]["delta"] == {"type": "thinking_delta", "thinking": "Hmm"}
    assert blocks[5][1]["delta"] == {"type": "text_delta", "text": "Yes"}


def test_native_tool_call_deltas_become_input_json_deltas() -> None:
    sequence = run(
        translation(tools=[WEATHER, TIME]),
        [
            delta(content="Let me look."),
            delta(
                tool_calls=[
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            ),
            delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
            delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
            delta(
                tool_calls=[
                    {
                        "index": 1,
                        "id": "call_b",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ]
            ),
            delta("tool_calls"),
        ],
    )
    starts = [payload for name, payload in sequence if name == "content_block_start"]
    assert [block["content_block"]["type"] for block in starts] == ["text", "tool_use", "tool_use"]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get_weather",
        "input": {},
    }
    assert starts[2]["content_block"]["id"] == "call_b"
    weather_json = "".join(
        payload["delta"]["partial_json"]
        for name, payload in sequence
        if name == "content_block_delta" and payload["index"] == 1
    )
    assert orjson.loads(weather_json) == {"city": "Paris"}
    assert sequence[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_forced_tool_streams_its_json_into_one_tool_use_block() -> None:
    sequence = run(
        translation(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}),
        [delta(content='{"city"'), delta(content=': "Oslo"}'), delta("stop")],
    )
    [start] = [payload for name, payload in sequence if name == "content_block_start"]
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "get_weather"
    assert start["content_block"]["id"].startswith("toolu_")
    partial = [payload["delta"] for name, payload in sequence if name == "content_block_delta"]
    assert partial == [
        {"type": "input_json_delta", "partial_json": '{"city"'},
        {"type": "input_json_delta", "partial_json": ': "Oslo"}'},
    ]
    assert sequence[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_forced_choice_among_several_is_sent_whole_once_the_name_is_known() -> None:
    sequence = run(
        translation(tools=[WEATHER, TIME], tool_choice={"type": "any"}),
        [
            delta(content='{"input": {"zone": "UTC"}, '),
            delta(content='"name": "get_time"}'),
            delta("stop"),
        ],
    )
    blocks = [(name, payload) for name, payload in sequence if name.startswith("content_block")]
    assert [name for name, _ in blocks] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    assert blocks[0][1]["content_block"]["name"] == "get_time"
    assert orjson.loads(blocks[1][1]["delta"]["partial_json"]) == {"zone": "UTC"}


def test_forced_choice_over_the_buffer_limit_fails() -> None:
    machine = MessageStream(
        translation(tools=[WEATHER, TIME], tool_choice={"type": "any"}),
        model="ai/smollm2",
        message_id="msg_1",
        max_buffer=12,
    )
    machine.feed(delta(content='{"input":'))
    with pytest.raises(errors.UpstreamError, match="larger than"):
        machine.feed(delta(content=' {"zone": "UTC"}'))


def test_failure_ends_the_stream_with_an_error_event_after_what_was_sent() -> None:
    machine = MessageStream(translation(), model="ai/smollm2", message_id="msg_1", max_buffer=64)
    sent = machine.feed(delta(content="Hi"))
    failed = events(sent + machine.fail(errors.UpstreamError("worker failed: boom")))
    assert [name for name, _ in failed][-1] == "error"
    assert failed[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "worker failed: boom"},
    }


def test_a_stream_that_ends_without_finishing_is_an_error() -> None:
    sequence = run(translation(), [delta(content="Hi")])
    assert sequence[-1][0] == "error"
    assert "ended before it finished" in sequence[-1][1]["error"]["message"]


def test_an_empty_stream_still_starts_the_message() -> None:
    sequence = run(translation(), [delta("stop")])
    assert [name for name, _ in sequence] == [
        "message_start",
        "ping",
        "message_delta",
        "message_stop",
    ]
