"""The gateway's wire formats as the CLI reads them."""

from __future__ import annotations

import json

import pytest

from model_cli.wire import (
    ChatChunk,
    LayerProgress,
    error_from_body,
    iter_sse_data,
    parse_chat_chunk,
    parse_transfer_line,
)

DIGEST = "sha256:" + "ab" * 32


def test_progress_line_with_a_layer() -> None:
    line = json.dumps(
        {
            "type": "progress",
            "message": "Downloaded: 1.00 MB",
            "total": 300,
            "mode": "pull",
            "layer": {"id": DIGEST, "size": 200, "current": 50},
        }
    )
    event = parse_transfer_line(line)
    assert event is not None
    assert (event.type, event.mode, event.total) == ("progress", "pull", 300)
    assert event.layer == LayerProgress(DIGEST, 200, 50)
    assert event.layer.short_id == "ab" * 6
    assert not event.layer.done
    assert LayerProgress(DIGEST, 200, 200).done


def test_success_line_without_layer_and_blank_lines() -> None:
    event = parse_transfer_line('{"type": "success", "message": "Model pulled successfully"}')
    assert event is not None and event.layer is None
    assert event.message == "Model pulled successfully"
    assert parse_transfer_line("   \n") is None


def test_html_escaped_lines_from_a_real_dmr_daemon() -> None:
    event = parse_transfer_line(
        "{&#34;type&#34;:&#34;error&#34;,&#34;message&#34;:&#34;x &amp; y&#34;}"
    )
    assert event is not None
    assert (event.type, event.message) == ("error", "x & y")


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '{"message": "no type"}'])
def test_lines_that_are_not_progress(line: str) -> None:
    with pytest.raises(ValueError):
        parse_transfer_line(line)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(-5, 0), ("12", 12), ("x", 0), (True, 0), (7.9, 7), (None, 0)],
)
def test_odd_byte_counts_read_as_numbers(raw: object, expected: int) -> None:
    line = json.dumps({"type": "progress", "layer": {"id": DIGEST, "size": raw, "current": 0}})
    event = parse_transfer_line(line)
    assert event is not None and event.layer is not None
    assert event.layer.size == expected


def test_sse_events_comments_multiline_data_and_done() -> None:
    lines = [
        ": keep-alive comment",
        "data: one",
        "",
        "event: message",
        "data: two",
        "data: lines",
        "",
        "data: [DONE]",
        "",
        "data: after done",
        "",
    ]
    assert list(iter_sse_data(lines)) == ["one", "two\nlines"]


def test_sse_last_event_without_a_blank_line() -> None:
    assert list(iter_sse_data(["data:x"])) == ["x"]
    assert list(iter_sse_data(["data: [DONE]"])) == []


def test_chat_chunk_fields() -> None:
    chunk = parse_chat_chunk(
        json.dumps(
            {
                "choices": [
                    {"delta": {"content": "Hi", "reasoning_content": "hmm"}, "finish_reason": None}
                ],
                "usage": {"completion_tokens": 3, "prompt_tokens": 9},
                "timings": {"predicted_n": 3, "predicted_per_second": 50.5, "note": "x"},
            }
        )
    )
    assert chunk == ChatChunk(
        content="Hi",
        reasoning="hmm",
        completion_tokens=3,
        prompt_tokens=9,
        timings={"predicted_n": 3.0, "predicted_per_second": 50.5},
    )


def test_completions_text_and_finish_reason() -> None:
    chunk = parse_chat_chunk('{"choices": [{"text": "abc", "finish_reason": "length"}]}')
    assert (chunk.content, chunk.finish_reason) == ("abc", "length")
    assert parse_chat_chunk('{"choices": []}') == ChatChunk()


def test_error_event_mid_stream() -> None:
    chunk = parse_chat_chunk('{"error": {"message": "worker failed", "code": 502}}')
    assert chunk.error == "worker failed"
    assert parse_chat_chunk('{"error": "plain"}').error == "plain"
    with pytest.raises(ValueError):
        parse_chat_chunk("[]")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"error": {"message": "model not found", "type": "not_found_error"}}',
            ("model not found", "not_found_error"),
        ),
        (b'{"error": "flat"}', ("flat", "")),
        (b'{"detail": "Not Found"}', ("Not Found", "")),
        (b"<html>Bad Gateway</html>", ("<html>Bad Gateway</html>", "")),
        (b"", ("HTTP 502", "")),
        (b"x" * 1000, ("x" * 300, "")),
    ],
)
def test_error_bodies(body: bytes, expected: tuple[str, str]) -> None:
    assert error_from_body(502, body) == expected
