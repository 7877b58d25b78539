"""Token counts read from the tail of an answer's bytes, in every dialect the gateway speaks."""

from __future__ import annotations

import pytest

from services.gateway.usage import Usage, UsageScanner

USAGE = b'"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}'


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b'{"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}'], (5, 7)),
        # A usage object split across two chunks.
        ([b'{"usage": {"prompt_tokens": 5,', b' "completion_tokens": 7}}'], (5, 7)),
        # OpenAI usage wins over llama-server's timings in the same answer.
        ([b'{"id":"x",' + USAGE + b',"timings":{"prompt_n":2,"predicted_n":3}}'], (11, 3)),
        (
            [
                b'{"usage":{"prompt_tokens":5,"completion_tokens":2,'
                b'"prompt_tokens_details":{"cached_tokens":1}}}'
            ],
            (5, 2),
        ),
        # Embeddings: prompt tokens only.
        ([b'{"usage":{"prompt_tokens":7,"total_tokens":7}}'], (7, 0)),
        ([b'event: message_delta\ndata: {"usage":{"input_tokens":3,"output_tokens":9}}\n'], (3, 9)),
        ([b'{"done":true,"prompt_eval_count":4,"eval_count":6}\n'], (4, 6)),
        ([b'data: {"timings":{"prompt_n":2,"predicted_n":3}}\n\ndata: [DONE]\n\n'], (2, 3)),
        ([b'{"object":"list","data":[]}'], None),
        # Generated text that mentions usage is escaped inside its JSON string.
        ([b'{"content":"\\"usage\\":{\\"prompt_tokens\\":9}"}'], None),
        ([b'{"usage":{"prompt_tokens":"many"}}'], None),
        ([b'{"usage":null}'], None),
        # The last figures count (a stream may report usage more than once).
        (
            [b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n', b"x" * 100, USAGE],
            (11, 3),
        ),
        # Only the tail is kept: figures buried under 8 KiB of later output are not found.
        ([USAGE, b"x" * 9000], None),
    ],
    ids=[
        "openai",
        "split",
        "usage-over-timings",
        "details",
        "embeddings",
        "anthropic",
        "ollama",
        "timings",
        "none",
        "escaped",
        "not-a-count",
        "null",
        "last-wins",
        "tail-only",
    ],
)
def test_usage_scanner(chunks: list[bytes], expected: tuple[int, int] | None) -> None:
    scanner = UsageScanner()
    for data in chunks:
        scanner.feed(data)
    usage = scanner.usage()
    assert (None if usage is None else (usage.prompt_tokens, usage.completion_tokens)) == expected


def test_total_is_prompt_plus_completion() -> None:
    assert Usage(prompt_tokens=5, completion_tokens=7).total_tokens == 12
