"""The load generator's verdict on a finished stream: the fault suite is only as good as this."""

from __future__ import annotations

import pytest

from tests.faults.load import Outcome, classify_stream

CHUNK = 'data: {"choices":[{"delta":{"content":"1"},"finish_reason":null}]}'
FINISH = 'data: {"choices":[{"delta":{},"finish_reason":"length"}]}'
ERROR = 'data: {"error":{"message":"worker failed","type":"server_error","code":503}}'
DONE = "data: [DONE]"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([CHUNK, FINISH, DONE], Outcome.SUCCEEDED),
        ([": keep-alive", CHUNK, "", FINISH, DONE], Outcome.SUCCEEDED),
        ([CHUNK, ERROR], Outcome.FAILED_CLEAN),
        ([CHUNK, ERROR, DONE], Outcome.FAILED_CLEAN),
        ([ERROR], Outcome.FAILED_CLEAN),
        # Cut off: no [DONE], or [DONE] without any finish_reason.
        ([CHUNK], Outcome.BROKEN),
        ([CHUNK, FINISH], Outcome.BROKEN),
        ([CHUNK, DONE], Outcome.BROKEN),
        ([], Outcome.BROKEN),
        # Malformed, or anything after the end.
        ([CHUNK, "data: {not json", FINISH, DONE], Outcome.BROKEN),
        ([CHUNK, FINISH, DONE, CHUNK], Outcome.BROKEN),
        ([CHUNK, ERROR, CHUNK], Outcome.BROKEN),
        (['data: {"error":"no message"}'], Outcome.BROKEN),
        (["data: [1, 2]", FINISH, DONE], Outcome.BROKEN),
    ],
)
def test_classify_stream(lines: list[str], expected: Outcome) -> None:
    outcome, detail = classify_stream(lines)
    assert outcome is expected, detail
    assert bool(detail) is (expected is not Outcome.SUCCEEDED)
