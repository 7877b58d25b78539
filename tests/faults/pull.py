"""kill -9 of the registry service in the middle of a pull, under chat load.

The pulled model is SmolLM2 padded with a few MiB of zeros (llama.cpp ignores bytes after the
tensor data), so its weights are a blob the store does not hold yet and the pull really
transfers ~100 MB from a real docker-registry. It is packaged and pushed there first, then
deleted from the store. The pull (`POST /models/create` through the gateway) is killed at its
first progress line; the harness restarts the registry, pulls again, and checks that the store
verifies and that every listed model inspects and loads.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.grpc_client import open_channel
from tests.faults.load import LoadProgress
from tests.faults.scenarios import FaultRecord, in_flight, restored
from tests.faults.stack import FaultStack, one_token_chat

__all__ = ["prepare_upstream_model", "pull_injector"]

_PADDING = 4 << 20
_TIMEOUT = 120.0


def _padded(gguf: Path, into: Path) -> Path:
    target = into / "smollm2-padded.gguf"
    shutil.copyfile(gguf, target)
    with target.open("ab") as file:
        file.write(b"\0" * _PADDING)
    return target


async def prepare_upstream_model(stack: FaultStack, upstream_host: str, workdir: Path) -> str:
    """Push a model the store does not hold to the upstream registry; returns its reference."""
    reference = f"{upstream_host}/faults/padded:v1"
    await stack.package(_padded(stack.plan.gguf, workdir), reference)
    async with open_channel(stack.registry_address) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        pushed = [
            message
            async for message in stub.Push(
                registry_pb2.PushRequest(reference=reference), timeout=_TIMEOUT
            )
        ]
        assert pushed and pushed[-1].type == registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS, pushed[-1:]
        await stub.DeleteModel(
            registry_pb2.DeleteModelRequest(reference=reference, force=True), timeout=_TIMEOUT
        )
    return reference


async def _pull(client: httpx.AsyncClient, reference: str, on_progress: Callable[[], None]) -> str:
    """The last line's type of a `POST /models/create` ("success", "error"), or what broke."""
    last = ""
    try:
        async with client.stream("POST", "/models/create", json={"from": reference}) as response:
            if response.status_code != 200:
                await response.aread()
                return f"http {response.status_code}"
            async for line in response.aiter_lines():
                if not line:
                    continue
                last = str(orjson.loads(line).get("type", ""))
                if last == "progress":
                    on_progress()
    except httpx.TransportError as exc:
        return f"broken: {type(exc).__name__}"
    return last or "empty"


async def _models_load(client: httpx.AsyncClient) -> list[str]:
    """Problems found while inspecting and loading every listed model; empty when all is well."""
    problems = []
    models = (await client.get("/models")).json()
    for model in models:
        for tag in model.get("tags") or [model["id"]]:
            inspect = await client.get(f"/models/{tag}")
            if inspect.status_code != 200:
                problems.append(f"inspect {tag}: {inspect.status_code}")
                continue
            chat = await one_token_chat(client, tag)
            if chat.status_code != 200:
                problems.append(f"load {tag}: {chat.status_code} {chat.text[:200]}")
    return problems


def pull_injector(reference: str) -> Callable[[FaultStack, LoadProgress], Awaitable[FaultRecord]]:
    async def inject(stack: FaultStack, progress: LoadProgress) -> FaultRecord:
        record = FaultRecord()
        await in_flight(progress)
        killed = False

        def kill_once() -> None:
            nonlocal killed
            if not killed:
                killed = True
                stack.kill(stack.registry)
                record.fault_at = time.monotonic()

        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=_TIMEOUT) as client:
            first = await _pull(client, reference, kill_once)
            record.notes.append(f"pull killed mid-transfer ended with: {first}")
            if not killed:
                record.notes.append("the pull finished before the kill")
                record.fault_at = time.monotonic()
            await stack.restart(stack.registry)
            await restored(stack, record)
            second = await _pull(client, reference, lambda: None)
            record.notes.append(f"pull after the restart: {second}")
            try:
                problems = await _models_load(client)
            except httpx.HTTPError as exc:
                problems = [f"listing models failed: {exc!r}"]
            record.notes.extend(problems)
        record.clean = killed and first == "error" and second == "success" and not problems
        return record

    return inject
