"""The load generator over a scripted gateway (httpx.MockTransport): HTTP errors, cut
connections and the one retry of a connection closed before any response."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.faults.load import LoadPlan, Outcome, run_load

STREAM = (
    b'data: {"choices":[{"delta":{"content":"1"},"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
PLAN = LoadPlan(model="m", clients=1, requests=1, backoff_initial=0.0, backoff_max=0.0)


def _gateway(*answers: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    """Answers requests in turn with the given handlers."""
    calls = iter(answers)
    return httpx.MockTransport(lambda request: next(calls)(request))


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=STREAM, headers={"x-worker-id": "w1"})


def _cut(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection closed", request=request)


async def _outcome(*answers: Callable[[httpx.Request], httpx.Response]) -> tuple[Outcome, str]:
    [result] = await run_load("http://gateway", PLAN, transport=_gateway(*answers))
    return result.outcome, result.detail


async def test_a_complete_stream_succeeds() -> None:
    assert await _outcome(_ok) == (Outcome.SUCCEEDED, "")


async def test_an_openai_error_status_is_clean_and_another_shape_is_broken() -> None:
    error = {"error": {"message": "scheduler unavailable", "type": "server_error"}}
    outcome, detail = await _outcome(lambda r: httpx.Response(503, json=error))
    assert outcome is Outcome.FAILED_CLEAN and "scheduler unavailable" in detail
    outcome, _ = await _outcome(lambda r: httpx.Response(502, text="Bad Gateway"))
    assert outcome is Outcome.BROKEN


async def test_a_connection_cut_before_the_head_is_retried_once() -> None:
    outcome, detail = await _outcome(_cut, _ok)
    assert outcome is Outcome.SUCCEEDED and detail.startswith("retried")
    outcome, _ = await _outcome(_cut, _cut)
    assert outcome is Outcome.BROKEN


async def test_refused_is_clean_and_a_timeout_is_hung() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def silent(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no bytes", request=request)

    assert (await _outcome(refused))[0] is Outcome.FAILED_CLEAN
    assert (await _outcome(silent))[0] is Outcome.HUNG


async def test_every_request_gets_one_result() -> None:
    plan = LoadPlan(model="m", clients=3, requests=10, backoff_initial=0.0, backoff_max=0.0)
    results = await run_load("http://gateway", plan, transport=httpx.MockTransport(_ok))
    assert [r.index for r in results] == list(range(10))
    assert {r.outcome for r in results} == {Outcome.SUCCEEDED}
    assert {r.worker for r in results} == {"w1"}
