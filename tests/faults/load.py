"""The load generator: K concurrent streaming chat clients issuing N requests in total, each
request classified by how it ended.

- succeeded: a 200 stream whose last event carried a finish_reason, followed by `[DONE]`;
- failed clean: an HTTP error status with an OpenAI-shaped error body, an `error` event in the
  stream followed by the stream's end, or a refused connection (nothing was accepted, and the
  client knows at once);
- hung: no byte for longer than the per-request idle deadline (must never happen);
- broken: anything else: a connection cut without an error event, a stream without `[DONE]`,
  an error body in another shape.

After a failure a client backs off (doubling, capped) as a real client would, so that a window
of unavailability does not burn the whole request budget in a second. A connection closed before
any response head is retried once, as the official OpenAI client does (see `_one`); the detail
of such a request says so.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

__all__ = [
    "LoadPlan",
    "LoadProgress",
    "Outcome",
    "RequestResult",
    "chat_body",
    "classify_stream",
    "run_load",
]

_CONNECT_TIMEOUT = 5.0


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED_CLEAN = "failed clean"
    HUNG = "hung"
    BROKEN = "broken"


@dataclass(frozen=True)
class LoadPlan:
    """What the clients send; `idle_deadline` is the longest silence before a request is hung."""

    model: str
    clients: int = 4
    requests: int = 24
    max_tokens: int = 32
    idle_deadline: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 2.0
    prompt: str = "Count slowly from one to one hundred, one number per line."


@dataclass(frozen=True)
class RequestResult:
    index: int
    outcome: Outcome
    started: float
    ended: float
    worker: str = ""
    detail: str = ""


@dataclass
class LoadProgress:
    """Live counters the fault injector watches (owned by the load's event loop)."""

    issued: int = 0
    streaming: dict[int, str] = field(default_factory=dict)
    results: list[RequestResult] = field(default_factory=list)

    def completed(self) -> int:
        return len(self.results)

    def counts(self) -> Counter[Outcome]:
        return Counter(result.outcome for result in self.results)


def chat_body(plan: LoadPlan, index: int) -> dict[str, Any]:
    return {
        "model": plan.model,
        "messages": [{"role": "user", "content": f"{plan.prompt} (request {index})"}],
        "max_tokens": plan.max_tokens,
        "temperature": 0,
        "seed": 7,
        "stream": True,
    }


def _openai_error(body: bytes) -> str | None:
    """The message of an OpenAI-shaped error body, else None."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return None


def classify_stream(lines: list[str]) -> tuple[Outcome, str]:
    """The outcome of a 200 SSE stream that ended (the server closed it normally)."""
    done = False
    finished = False
    error: str | None = None
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            done = True
            continue
        if done or error is not None:
            return Outcome.BROKEN, f"data after the end of the stream: {data[:200]}"
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return Outcome.BROKEN, f"malformed event: {data[:200]}"
        if not isinstance(event, dict):
            return Outcome.BROKEN, f"event is not an object: {data[:200]}"
        if "error" in event:
            message = event["error"].get("message") if isinstance(event["error"], dict) else None
            if not isinstance(message, str):
                return Outcome.BROKEN, f"error event without a message: {data[:200]}"
            error = message
            continue
        for choice in event.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                finished = True
    if error is not None:
        return Outcome.FAILED_CLEAN, f"error event: {error}"
    if done and finished:
        return Outcome.SUCCEEDED, ""
    return Outcome.BROKEN, f"stream ended without {'finish_reason' if done else '[DONE]'}"


async def _attempt(
    client: httpx.AsyncClient, plan: LoadPlan, index: int, progress: LoadProgress
) -> tuple[Outcome, str, str, bool]:
    """(outcome, worker id, detail, whether a response head arrived) of one try."""
    head = False
    try:
        async with client.stream(
            "POST", "/engines/v1/chat/completions", json=chat_body(plan, index)
        ) as response:
            head = True
            worker = response.headers.get("x-worker-id", "")
            if response.status_code != 200:
                body = await response.aread()
                message = _openai_error(body)
                if message is None:
                    return Outcome.BROKEN, worker, f"{response.status_code}: {body[:200]!r}", head
                return Outcome.FAILED_CLEAN, worker, f"{response.status_code}: {message}", head
            lines: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    progress.streaming[index] = worker
                    lines.append(line)
            outcome, detail = classify_stream(lines)
            return outcome, worker, detail, head
    except httpx.ConnectError as exc:
        return Outcome.FAILED_CLEAN, "", f"connection refused: {exc}", head
    except httpx.TimeoutException as exc:
        detail = f"no progress for {plan.idle_deadline:g}s: {type(exc).__name__}"
        return Outcome.HUNG, "", detail, head
    except httpx.TransportError as exc:
        return Outcome.BROKEN, "", f"{type(exc).__name__}: {exc}", head
    finally:
        progress.streaming.pop(index, None)


async def _one(
    client: httpx.AsyncClient, plan: LoadPlan, index: int, progress: LoadProgress
) -> tuple[Outcome, str, str]:
    """(outcome, worker id, detail) of one request.

    A connection that closes before any response head is retried once at once, as the official
    OpenAI client does: a server closing an idle keep-alive connection (a gateway shutting down)
    races with a request just sent on it, and nothing was served. A break after the head is
    never retried: that is the stream's outcome.
    """
    outcome, worker, detail, head = await _attempt(client, plan, index, progress)
    if outcome is Outcome.BROKEN and not head:
        outcome, worker, detail, _ = await _attempt(client, plan, index, progress)
        detail = f"retried once after the connection closed before a response; {detail}"
    return outcome, worker, detail


async def _client(
    client: httpx.AsyncClient, plan: LoadPlan, progress: LoadProgress, clock: Callable[[], float]
) -> None:
    backoff = plan.backoff_initial
    while progress.issued < plan.requests:
        index = progress.issued
        progress.issued += 1
        started = clock()
        outcome, worker, detail = await _one(client, plan, index, progress)
        progress.results.append(RequestResult(index, outcome, started, clock(), worker, detail))
        if outcome is Outcome.SUCCEEDED:
            backoff = plan.backoff_initial
            continue
        # A client that backs off: the pause is the load's pacing, not a wait for a condition.
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, plan.backoff_max)


async def run_load(
    base_url: str,
    plan: LoadPlan,
    progress: LoadProgress | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[RequestResult]:
    """Run the whole load; every request issued has exactly one result when this returns.
    `transport` replaces the network (the classifier's own tests)."""
    progress = progress if progress is not None else LoadProgress()
    timeout = httpx.Timeout(
        connect=_CONNECT_TIMEOUT,
        read=plan.idle_deadline,
        write=_CONNECT_TIMEOUT,
        pool=plan.idle_deadline,
    )
    limits = httpx.Limits(max_connections=plan.clients, max_keepalive_connections=plan.clients)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout, limits=limits, transport=transport
    ) as client:
        async with asyncio.TaskGroup() as group:
            for _ in range(plan.clients):
                group.create_task(_client(client, plan, progress, time.monotonic))
    return sorted(progress.results, key=lambda result: result.index)
