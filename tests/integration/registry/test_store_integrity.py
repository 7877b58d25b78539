"""kill -9 of the registry process during a pull, a push and a package upload never leaves a model
that lists but cannot load: after a restart every listed model inspects, `Verify` finds every blob
intact, and the interrupted operation succeeds when run again.

The registry runs as a real subprocess (`python -m services.registry`) so it can be SIGKILLed. To
cut it mid-blob deterministically, its traffic to the upstream docker-registry goes through a TCP
proxy that stops forwarding after a byte budget: the registry then waits on a half-transferred
blob, and the test kills it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import grpc
import httpx

from modelrunner.v1 import registry_pb2, registry_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.health_client import wait_until_serving
from services.registry.store.blobs import INCOMPLETE_SUFFIX
from services.registry.store.manifests import MEDIA_TYPE_GGUF
from services.stack.processes import ServiceProcess
from tests.support.processes import free_port, wait_until
from tests.unit.registry.conftest import smollm2_path

from .conftest import DockerRegistry, push_model, registry_service, success_model

_MIB = 1 << 20
# Far into the 98 MB GGUF, far from its end.
_BUDGET = 12 * _MIB
_TAG = "ai/smollm2:v1"


class GatedProxy:
    """Forwards TCP to `upstream_port` until `budget` bytes (both directions) have passed, then
    holds every connection open without forwarding; `exhausted` is set at that moment."""

    def __init__(self, upstream_port: int, budget: int) -> None:
        self._upstream_port = upstream_port
        self._budget = budget
        self._forwarded = 0
        self.exhausted = asyncio.Event()
        self._held = asyncio.Event()  # never set: the gate stays shut
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> GatedProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [writer]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
            writers.append(up_writer)
            # A TaskGroup, so that cancelling this handler also waits for both pumps to end.
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer))
                group.create_task(self._pump(up_reader, writer))
        except OSError:
            pass
        finally:
            for each in writers:
                each.close()
            self._tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        # A peer reset (the killed registry) just ends this direction.
        with contextlib.suppress(OSError):
            while data := await source.read(64 * 1024):
                if self._forwarded + len(data) > self._budget:
                    self.exhausted.set()
                    await self._held.wait()
                self._forwarded += len(data)
                target.write(data)
                await target.drain()
            target.write_eof()


class RegistryProcess:
    """The registry service as a child process on `root`; `kill()` is SIGKILL."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "MODELS_PATH": str(root),
            "REGISTRY_LISTEN_ADDRESS": self.address,
            "REGISTRY_METRICS_ADDRESS": "0",
            "DOCKER_CONFIG": str(logs / "docker-config"),
            "REGISTRY_PROGRESS_BYTES": str(256 * 1024),
            "LOG_FORMAT": "text",
        }
        self._service = ServiceProcess("registry", "services.registry", env, logs / "registry.log")
        self.channel: grpc.aio.Channel | None = None

    @property
    def stub(self) -> registry_pb2_grpc.RegistryAsyncStub:
        assert self.channel is not None
        return registry_pb2_grpc.RegistryStub(self.channel)

    async def start(self) -> None:
        await self._service.start()
        await wait_until_serving(self.address, timeout=30, gone=self._service.exit_reason)
        self.channel = open_channel(self.address)

    async def kill(self) -> None:
        assert self._service.pid is not None
        os.kill(self._service.pid, signal.SIGKILL)
        await asyncio.wait_for(self._service.wait(), 10)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        await self._service.stop(10)


@contextlib.asynccontextmanager
async def registry_process(root: Path, logs: Path) -> AsyncIterator[RegistryProcess]:
    process = RegistryProcess(root, logs)
    try:
        await process.start()
        yield process
    finally:
        await process.close()


async def assert_consistent(stub: registry_pb2_grpc.RegistryAsyncStub) -> list[str]:
    """Every listed model inspects and every blob verifies; returns the listed tags."""
    listed = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=30)
    for model in listed.models:
        inspected = await stub.InspectModel(
            registry_pb2.InspectModelRequest(reference=model.id), timeout=30
        )
        assert [layer.digest for layer in inspected.layers] == [
            layer.digest for layer in model.layers
        ]
    report = await stub.Verify(registry_pb2.VerifyRequest(), timeout=120)
    bad = [blob for blob in report.blobs if blob.status != registry_pb2.BLOB_STATUS_OK]
    assert not bad, bad
    assert report.models == len(listed.models)
    return [tag for model in listed.models for tag in model.tags]


def _stored_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def _incomplete(root: Path) -> list[Path]:
    return list((root / "blobs").glob(f"*/*{INCOMPLETE_SUFFIX}"))


async def _kill_when_gated(
    registry: RegistryProcess, proxy: GatedProxy, call: grpc.aio.UnaryStreamCall[object, object]
) -> list[object]:
    """Read `call` until the proxy's budget runs out, then SIGKILL the registry."""
    seen: list[object] = []

    async def read() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for message in call:
                seen.append(message)

    reader = asyncio.create_task(read())
    gate = asyncio.create_task(proxy.exhausted.wait())
    try:
        await asyncio.wait({reader, gate}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        assert gate.done(), f"the transfer ended before the proxy's budget ran out: {seen[-1:]}"
        await registry.kill()
        await asyncio.wait_for(reader, timeout=30)
    finally:
        reader.cancel()
        gate.cancel()
        await asyncio.gather(reader, gate, return_exceptions=True)
    return seen


async def _pushed_upstream(source_root: Path, upstream: DockerRegistry) -> registry_pb2.Model:
    async with registry_service(source_root) as source:
        return success_model(await push_model(source, _TAG, f"{upstream.host}/{_TAG}"))


async def test_kill_during_pull(
    source_root: Path, fresh_registry: DockerRegistry, tmp_path: Path
) -> None:
    model = await _pushed_upstream(source_root, fresh_registry)
    gguf = next(layer for layer in model.layers if layer.media_type == MEDIA_TYPE_GGUF)
    root = tmp_path / "models"
    async with GatedProxy(fresh_registry.port, _BUDGET) as proxy:
        async with registry_process(root, tmp_path / "run1") as registry:
            call = registry.stub.Pull(
                registry_pb2.PullRequest(reference=f"127.0.0.1:{proxy.port}/{_TAG}"), timeout=120
            )
            await _kill_when_gated(registry, proxy, call)
    assert _incomplete(root), "the kill came mid-blob, leaving a partial download"
    async with registry_process(root, tmp_path / "run2") as registry:
        assert await assert_consistent(registry.stub) == []
        request = registry_pb2.PullRequest(reference=f"{fresh_registry.host}/{_TAG}")
        messages = [message async for message in registry.stub.Pull(request, timeout=120)]
        assert success_model(messages).id == model.id
        assert await assert_consistent(registry.stub) == [f"{fresh_registry.host}/{_TAG}"]
        verified = await registry.stub.Verify(registry_pb2.VerifyRequest(), timeout=120)
        assert gguf.digest in {blob.digest for blob in verified.blobs}


async def test_kill_during_push(
    source_root: Path, fresh_registry: DockerRegistry, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    await asyncio.to_thread(shutil.copytree, source_root, root)
    async with GatedProxy(fresh_registry.port, _BUDGET) as proxy:
        async with registry_process(root, tmp_path / "run1") as registry:
            call = registry.stub.Push(
                registry_pb2.PushRequest(reference=_TAG, target=f"127.0.0.1:{proxy.port}/{_TAG}"),
                timeout=120,
            )
            await _kill_when_gated(registry, proxy, call)
    # The manifest goes last, so the upstream has no model to serve either.
    async with httpx.AsyncClient(timeout=10) as http:
        manifest = await http.get(f"http://{fresh_registry.host}/v2/ai/smollm2/manifests/v1")
    assert manifest.status_code == 404
    async with registry_process(root, tmp_path / "run2") as registry:
        assert await assert_consistent(registry.stub) == [_TAG]
        request = registry_pb2.PushRequest(reference=_TAG, target=f"{fresh_registry.host}/{_TAG}")
        messages = [message async for message in registry.stub.Push(request, timeout=120)]
        assert messages[-1].type == registry_pb2.TRANSFER_EVENT_TYPE_SUCCESS, messages[-1]


async def _upload(
    stub: registry_pb2_grpc.RegistryAsyncStub, gguf: Path, *, limit: int | None
) -> grpc.aio.StreamUnaryCall[registry_pb2.PackageUploadRequest, registry_pb2.PackageResponse]:
    """Send the header and the GGUF (its first `limit` bytes only, without the end marker, when
    `limit` is set); returns the call."""
    call = stub.PackageUpload(timeout=120)
    size = (await asyncio.to_thread(gguf.stat)).st_size
    header = registry_pb2.PackageUploadHeader(
        tag="me/uploaded:v1", gguf_name=gguf.name, gguf_size=size
    )
    await call.write(registry_pb2.PackageUploadRequest(header=header))
    sent = 0
    with gguf.open("rb") as source:
        while chunk := source.read(_MIB):
            if limit is not None and sent >= limit:
                return call
            await call.write(registry_pb2.PackageUploadRequest(gguf_chunk=chunk))
            sent += len(chunk)
    await call.write(registry_pb2.PackageUploadRequest(end=True))
    await call.done_writing()
    return call


async def test_kill_during_package_upload(tmp_path: Path) -> None:
    gguf = smollm2_path()
    root = tmp_path / "models"
    async with registry_process(root, tmp_path / "run1") as registry:
        call = await _upload(registry.stub, gguf, limit=_BUDGET * 3)
        # Bytes the registry has taken in are on disk somewhere under the store; wait for them.
        await wait_until(
            lambda: _stored_bytes(root) >= _BUDGET,
            what="the registry writing the uploaded bytes",
            timeout=60,
        )
        await registry.kill()
        call.cancel()
    async with registry_process(root, tmp_path / "run2") as registry:
        assert await assert_consistent(registry.stub) == []
        reply = await (await _upload(registry.stub, gguf, limit=None))
        assert list(reply.model.tags) == ["me/uploaded:v1"]
        assert await assert_consistent(registry.stub) == ["me/uploaded:v1"]
