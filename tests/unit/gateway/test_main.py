"""`python -m services.gateway` as a real process: uvloop + httptools, settings, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from modelrunner.v1 import worker_pb2
from services.gateway.__main__ import build_server
from services.gateway.config import GatewaySettings
from tests.support.processes import free_port
from tests.unit.gateway.conftest import Neighbours
from tests.unit.gateway.fakes import chunk, head

REPO = Path(__file__).resolve().parents[3]
WAIT = 20.0


def test_server_uses_uvloop_and_httptools() -> None:
    server = build_server(GatewaySettings(port=13434, listen_host="0.0.0.0", shutdown_grace=7))

    assert server.config.loop == "uvloop"
    assert server.config.http == "httptools"
    assert (server.config.host, server.config.port) == ("0.0.0.0", 13434)
    assert server.config.timeout_graceful_shutdown == 7


async def _start(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.gateway",
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=sink,
            stderr=sink,
        )


async def _wait_serving(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as client:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"gateway exited early:\n{_tail(log)}")
            try:
                if (await client.get("/")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"gateway not serving after {WAIT}s:\n{_tail(log)}")
            await asyncio.sleep(0.05)


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_sigterm_lets_an_open_stream_finish_then_exits_cleanly(
    neighbours: Neighbours, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def held(
        request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        yield head(200, "text/event-stream")
        yield chunk(b"data: 1\n\n")
        await asyncio.wait_for(release.wait(), WAIT)
        yield chunk(b"data: [DONE]\n\n")

    neighbours.worker.scripts.append(held)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    process = await _start(
        {
            "MODEL_RUNNER_PORT": str(port),
            "REGISTRY_ADDRESS": neighbours.control_address,
            "SCHEDULER_ADDRESS": neighbours.control_address,
            "GATEWAY_SHUTDOWN_GRACE": "15s",
            "LOG_LEVEL": "warning",
        },
        log,
    )
    try:
        await _wait_serving(url, process, log)
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            async with client.stream(
                "POST", "/v1/chat/completions", content=b'{"model": "smollm2", "stream": true}'
            ) as response:
                body = b""
                stream = response.aiter_raw()
                while len(body) < len(b"data: 1\n\n"):
                    body += await anext(stream)
                process.send_signal(signal.SIGTERM)
                await _wait_refusing(url, process)
                release.set()
                body += b"".join([part async for part in stream])
        assert body == b"data: 1\n\ndata: [DONE]\n\n"
        assert await asyncio.wait_for(process.wait(), WAIT) == 0, log.read_text()
    finally:
        await _stop(process)


async def _wait_refusing(url: str, process: asyncio.subprocess.Process) -> None:
    """New connections are refused once shutdown has begun (the listening socket is closed)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as client:
        while True:
            try:
                await client.get("/")
            except httpx.ConnectError:
                return
            except httpx.RemoteProtocolError:
                # Connected into the backlog just as the listener closed, then dropped
                # unanswered: the next try is refused.
                pass
            assert process.returncode is None, "gateway exited before the open stream finished"
            assert asyncio.get_running_loop().time() < deadline, "gateway kept accepting"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("name", "value"), [("GATEWAY_REQUEST_TIMEOUT", "never"), ("MODEL_RUNNER_PORT", "0")]
)
async def test_bad_settings_stop_the_process_with_the_variable_named(
    tmp_path: Path, name: str, value: str
) -> None:
    log = tmp_path / "gateway.log"
    process = await _start({name: value}, log)
    try:
        code = await asyncio.wait_for(process.wait(), WAIT)
    finally:
        await _stop(process)
    assert code != 0
    assert name in log.read_text()
