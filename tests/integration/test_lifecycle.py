"""Runner lifecycle through the real stack: idle unload, a killed llama-server, a dead worker.
Each test starts its own stack because each one breaks or reconfigures it."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from services.stack.launcher import LocalStack
from tests.integration.conftest import StackFactory
from tests.support.processes import child_pids, is_alive, wait_until

pytestmark = pytest.mark.integration

CHAT = "/engines/llama.cpp/v1/chat/completions"


def _chat(max_tokens: int = 8, stream: bool = False) -> dict[str, object]:
    return {
        "model": "ai/smollm2",
        "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 42,
        "stream": stream,
    }


def _llama_servers(stack: LocalStack) -> set[int]:
    assert stack.worker.pid is not None
    return child_pids(stack.worker.pid)


async def test_idle_model_is_unloaded_after_keep_alive(stack_factory: StackFactory) -> None:
    async with stack_factory({"MODEL_KEEP_ALIVE": "2s"}) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
            assert (await http.post(CHAT, json=_chat())).status_code == 200
            servers = _llama_servers(stack)
            assert len(servers) == 1
            placements = (await http.get("/engines/ps")).json()
            assert len(placements) == 1

            async def unloaded() -> bool:
                return (await http.get("/engines/ps")).json() == []

            await wait_until(unloaded, timeout=30, what="idle unload")

            async def exited() -> bool:
                return not any(is_alive(pid) for pid in servers)

            await wait_until(exited, timeout=15, what="llama-server to exit")
            # The next request loads it again.
            assert (await http.post(CHAT, json=_chat())).status_code == 200


async def test_killed_llama_server_is_replaced(stack_factory: StackFactory) -> None:
    async with stack_factory() as stack:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
            assert (await http.post(CHAT, json=_chat())).status_code == 200
            (server,) = _llama_servers(stack)
            os.kill(server, signal.SIGKILL)
            # Every request gets an answer from a fresh llama-server or a clean 5xx, never a
            # hang; within seconds (the worker noticing the exit) it is served again.
            answers: list[tuple[int, str]] = []

            async def served() -> bool:
                response = await asyncio.wait_for(http.post(CHAT, json=_chat()), timeout=120)
                if response.status_code != 200:
                    assert response.status_code in {502, 503}, response.text
                    answers.append((response.status_code, response.json()["error"]["message"]))
                return response.status_code == 200

            try:
                await wait_until(served, timeout=30, what="a replacement llama-server")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the last answers: {answers[-5:]}") from None
            (replacement,) = _llama_servers(stack)
            assert replacement != server


async def test_llama_server_killed_mid_stream_ends_the_stream_cleanly(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory() as stack:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
            assert (await http.post(CHAT, json=_chat())).status_code == 200
            (server,) = _llama_servers(stack)
            events: list[str] = []

            async def consume() -> None:
                async with http.stream("POST", CHAT, json=_chat(4000, stream=True)) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            events.append(line)
                            if len(events) == 3:
                                os.kill(server, signal.SIGKILL)

            await asyncio.wait_for(consume(), timeout=60)
            assert len(events) >= 3
            assert "error" in events[-1], events[-3:]
            assert "[DONE]" not in events[-1]
            # And the stack recovers.
            for _ in range(5):
                if (await http.post(CHAT, json=_chat())).status_code == 200:
                    break
            else:
                pytest.fail("stack did not recover after the llama-server crash")


async def test_no_worker_gives_503(stack_factory: StackFactory) -> None:
    async with stack_factory() as stack:
        await stack.worker.stop(timeout=20)
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as http:
            # While the scheduler still believes in the worker the request fails cleanly (502/503);
            # once its heartbeat lease runs out, it is 503 "no worker".
            async def refused_as_unavailable() -> bool:
                response = await http.post(CHAT, json=_chat())
                assert response.status_code in {502, 503}, response.text
                return response.status_code == 503

            await wait_until(refused_as_unavailable, timeout=30, what="503 without workers")
            response = await http.post(CHAT, json=_chat())
            assert response.json()["error"]["message"]
