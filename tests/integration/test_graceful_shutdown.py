"""SIGTERM mid-stream, on the real chain: the stream finishes, and nothing is left behind.

Worker: it and its runners turn DRAINING (the scheduler stops routing and loading there), the
stream in flight runs to its end, then every llama-server is stopped. Gateway: the listening
socket closes at once while the open stream finishes within GATEWAY_SHUTDOWN_GRACE.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import StackFactory
from tests.support.processes import child_pids, is_alive, wait_until

pytestmark = pytest.mark.integration

CHAT = "/engines/llama.cpp/v1/chat/completions"
# ignore_eos makes the stream last its full length, long enough to signal in the middle of it.
LONG_STREAM = {
    "model": "ai/smollm2",
    "messages": [{"role": "user", "content": "Count from one to one hundred."}],
    "max_tokens": 128,
    "ignore_eos": True,
    "stream": True,
}
WAIT = 60.0
# Generous: the machine running the tests may be slow and shared.
GRACE = {"WORKER_SHUTDOWN_GRACE": "60s", "GATEWAY_SHUTDOWN_GRACE": "60s"}


async def _warm(http: httpx.AsyncClient) -> None:
    response = await http.post(
        CHAT,
        json={
            "model": "ai/smollm2",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        },
    )
    assert response.status_code == 200, response.text


async def _stream_then(
    http: httpx.AsyncClient, first_chunk: asyncio.Event
) -> list[dict[str, Any] | str]:
    """The stream's events (parsed) and the final "[DONE]"; sets `first_chunk` when one came."""
    events: list[dict[str, Any] | str] = []
    async with http.stream("POST", CHAT, json=LONG_STREAM) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            events.append("[DONE]" if data == "[DONE]" else orjson.loads(data))
            first_chunk.set()
    return events


async def _signal_mid_stream(
    http: httpx.AsyncClient, pid: int
) -> asyncio.Task[list[dict[str, Any] | str]]:
    """Start the long stream; once its first chunk is in, SIGTERM `pid`. Returns the stream."""
    first_chunk = asyncio.Event()
    streaming = asyncio.create_task(_stream_then(http, first_chunk))
    await asyncio.wait_for(first_chunk.wait(), WAIT)
    os.kill(pid, signal.SIGTERM)
    return streaming


def _assert_complete(events: list[dict[str, Any] | str]) -> None:
    assert events[-1] == "[DONE]"
    parsed = [event for event in events if isinstance(event, dict)]
    assert not [event for event in parsed if "error" in event]
    finish = [
        c["finish_reason"] for e in parsed for c in e.get("choices", []) if c["finish_reason"]
    ]
    assert finish == ["length"]
    # Every token arrived: the stream was not cut short.
    assert sum(1 for e in parsed for c in e.get("choices", []) if c["delta"].get("content")) >= 120


async def test_sigterm_worker_mid_stream(stack_factory: StackFactory) -> None:
    async with (
        stack_factory(GRACE) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=WAIT) as http,
    ):
        await _warm(http)
        worker_pid = stack.worker.pid
        assert worker_pid is not None
        llama_servers = child_pids(worker_pid)
        assert llama_servers, "the worker runs no llama-server"

        streaming = await _signal_mid_stream(http, worker_pid)
        seen_draining = False

        async def draining() -> bool:
            nonlocal seen_draining
            rows = (await http.get("/engines/ps")).json()
            workers = (await http.get("/engines/workers")).json()
            seen_draining = any(row["state"] == "draining" for row in rows) and all(
                worker["draining"] for worker in workers
            )
            return seen_draining or streaming.done()

        await wait_until(draining, what="the worker to be reported draining", timeout=WAIT)
        # The scheduler heard of it while the stream still ran: nothing new is routed there, and
        # nothing new is loaded there.
        assert seen_draining, "the stream ended before the scheduler saw the worker draining"
        _assert_complete(await asyncio.wait_for(streaming, WAIT))

        assert await asyncio.wait_for(stack.worker.wait(), WAIT) == 0
        assert not [pid for pid in llama_servers if is_alive(pid)]
        # A new request finds no runner: an error answer, not a hang.
        refused = await http.post(CHAT, json={**LONG_STREAM, "stream": False, "max_tokens": 1})
        assert refused.status_code >= 500


async def test_sigterm_gateway_mid_stream(stack_factory: StackFactory) -> None:
    async with (
        stack_factory(GRACE) as stack,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=WAIT) as http,
    ):
        await _warm(http)
        gateway_pid = stack.gateway.pid
        assert gateway_pid is not None

        streaming = await _signal_mid_stream(http, gateway_pid)

        async def refuses_connections() -> bool:
            # A fresh client: a new connection, not one kept alive from before.
            async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=2.0) as fresh:
                try:
                    await fresh.get("/")
                except httpx.ConnectError:
                    return True
                except httpx.RemoteProtocolError:
                    # Connected into the backlog just as the listener closed, then dropped
                    # unanswered: the next try is refused.
                    return False
            return False

        await wait_until(refuses_connections, what="the gateway to stop listening", timeout=WAIT)
        stream_was_open = not streaming.done()
        _assert_complete(await asyncio.wait_for(streaming, WAIT))
        assert await asyncio.wait_for(stack.gateway.wait(), WAIT) == 0
        assert stream_was_open, "the stream ended before the listener closed: nothing was drained"
