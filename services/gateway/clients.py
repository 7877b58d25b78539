"""Thin async clients for the gateway's neighbours: registry, scheduler and workers.

They only add deadlines and plain Python signatures; gRPC errors pass through unchanged so the
caller, which knows which step failed, maps them (errors.from_rpc_error).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc

from modelrunner.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2_grpc,
)
from services.common.grpc_client import open_channel

if TYPE_CHECKING:
    from modelrunner.v1.registry_pb2_grpc import RegistryAsyncStub
    from modelrunner.v1.scheduler_pb2_grpc import SchedulerAsyncStub
    from modelrunner.v1.worker_pb2_grpc import WorkerAsyncStub

__all__ = ["RegistryClient", "SchedulerClient", "WorkerChannels", "WorkerLease"]

_log = logging.getLogger(__name__)


class RegistryClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float) -> None:
        self._stub: RegistryAsyncStub = registry_pb2_grpc.RegistryStub(channel)
        self._timeout = timeout

    async def list_models(self) -> Sequence[common_pb2.Model]:
        reply = await self._stub.ListModels(registry_pb2.ListModelsRequest(), timeout=self._timeout)
        return reply.models

    async def inspect_model(self, reference: str) -> common_pb2.Model:
        return await self._stub.InspectModel(
            registry_pb2.InspectModelRequest(reference=reference), timeout=self._timeout
        )

    async def inspect_remote(
        self, reference: str, credentials: registry_pb2.RegistryCredentials
    ) -> common_pb2.Model:
        """The model as its upstream registry holds it; nothing is pulled."""
        return await self._stub.InspectRemote(
            registry_pb2.InspectRemoteRequest(reference=reference, credentials=credentials),
            timeout=self._timeout,
        )

    async def tag_model(self, source: str, target: str) -> registry_pb2.TagModelResponse:
        return await self._stub.TagModel(
            registry_pb2.TagModelRequest(source=source, target=target), timeout=self._timeout
        )

    async def delete_model(
        self, reference: str, *, force: bool
    ) -> registry_pb2.DeleteModelResponse:
        return await self._stub.DeleteModel(
            registry_pb2.DeleteModelRequest(reference=reference, force=force),
            timeout=self._timeout,
        )

    async def purge(self) -> registry_pb2.PurgeResponse:
        return await self._stub.Purge(registry_pb2.PurgeRequest(), timeout=self._timeout)

    async def disk_usage(self) -> registry_pb2.DiskUsageResponse:
        return await self._stub.DiskUsage(registry_pb2.DiskUsageRequest(), timeout=self._timeout)

    async def verify(self, *, timeout: float) -> registry_pb2.VerifyResponse:
        """Re-hash the whole store; `timeout` must allow reading every blob."""
        return await self._stub.Verify(registry_pb2.VerifyRequest(), timeout=timeout)

    def package_upload(
        self, *, timeout: float
    ) -> grpc.aio.StreamUnaryCall[registry_pb2.PackageUploadRequest, registry_pb2.PackageResponse]:
        """An upload call: the caller writes the header, then the chunks, then awaits the reply."""
        return self._stub.PackageUpload(timeout=timeout)

    def pull(
        self, reference: str, credentials: registry_pb2.RegistryCredentials, *, timeout: float
    ) -> grpc.aio.UnaryStreamCall[registry_pb2.PullRequest, registry_pb2.TransferProgress]:
        """The registry's progress stream; the caller reads it and cancels it when done."""
        return self._stub.Pull(
            registry_pb2.PullRequest(reference=reference, credentials=credentials),
            timeout=timeout,
        )

    def push(
        self,
        reference: str,
        credentials: registry_pb2.RegistryCredentials,
        *,
        timeout: float,
    ) -> grpc.aio.UnaryStreamCall[registry_pb2.PushRequest, registry_pb2.TransferProgress]:
        return self._stub.Push(
            registry_pb2.PushRequest(reference=reference, credentials=credentials),
            timeout=timeout,
        )


class SchedulerClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float) -> None:
        self._channel = channel
        self._stub: SchedulerAsyncStub = scheduler_pb2_grpc.SchedulerStub(channel)
        self._timeout = timeout

    def reachable(self) -> bool:
        """False when there is no working connection to the scheduler."""
        state = self._channel.get_state(try_to_connect=False)
        return state == grpc.ChannelConnectivity.READY

    async def assign(
        self, request: scheduler_pb2.AssignRequest, *, timeout: float
    ) -> scheduler_pb2.AssignResponse:
        return await self._stub.Assign(request, timeout=timeout)

    async def release(self, lease_id: str, *, runner_failed: bool, timeout: float) -> None:
        await self._stub.Release(
            scheduler_pb2.ReleaseRequest(lease_id=lease_id, runner_failed=runner_failed),
            timeout=timeout,
        )

    async def list_placements(self) -> Sequence[scheduler_pb2.Placement]:
        reply = await self._stub.ListPlacements(
            scheduler_pb2.ListPlacementsRequest(), timeout=self._timeout
        )
        return reply.placements

    async def unload_models(self, *, unload_all: bool, models: Sequence[str]) -> int:
        reply = await self._stub.UnloadModels(
            scheduler_pb2.UnloadModelsRequest(all=unload_all, models=list(models)),
            timeout=self._timeout,
        )
        return reply.unloaded_runners

    async def unload_deleted(self, models: Sequence[str], *, everything: bool = False) -> None:
        """After models left the store: unload their idle runners so that a deleted model stops
        holding memory (as Ollama and DMR do). The delete already happened, so a scheduler that
        cannot be reached is logged, not an error (its keep-alive unloads them later)."""
        if not models and not everything:
            return
        try:
            await self.unload_models(unload_all=everything, models=models)
        except grpc.aio.AioRpcError as exc:
            _log.warning(
                "deleted %s but could not unload it: %s", list(models) or "all", exc.details()
            )

    async def configure_model(
        self, request: scheduler_pb2.ConfigureModelRequest
    ) -> scheduler_pb2.ModelConfigEntry:
        return await self._stub.ConfigureModel(request, timeout=self._timeout)

    async def list_model_configs(self, model: str = "") -> Sequence[scheduler_pb2.ModelConfigEntry]:
        """Every stored configuration, or the one of `model` ("" for all)."""
        reply = await self._stub.ListModelConfigs(
            scheduler_pb2.ListModelConfigsRequest(model=model), timeout=self._timeout
        )
        return reply.entries

    async def list_workers(self) -> Sequence[scheduler_pb2.WorkerStatus]:
        reply = await self._stub.ListWorkers(
            scheduler_pb2.ListWorkersRequest(), timeout=self._timeout
        )
        return reply.workers


class _Entry:
    __slots__ = ("address", "channel", "retired", "stub", "users")

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.stub: WorkerAsyncStub = worker_pb2_grpc.WorkerStub(channel)
        self.users = 0
        self.retired = False


class WorkerLease:
    """One request's use of a cached worker channel; `release()` exactly once when done."""

    __slots__ = ("_entry", "_pool", "_released")

    def __init__(self, pool: WorkerChannels, entry: _Entry) -> None:
        self._pool = pool
        self._entry = entry
        self._released = False

    @property
    def address(self) -> str:
        return self._entry.address

    @property
    def stub(self) -> WorkerAsyncStub:
        return self._entry.stub

    def reachable(self) -> bool:
        """False when the channel has no working connection (the worker is down or restarting)."""
        state = self._entry.channel.get_state(try_to_connect=False)
        return state == grpc.ChannelConnectivity.READY

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._pool._release(self._entry)


class WorkerChannels:
    """A bounded cache of channels to workers, keyed by address.

    Channels are shared by all requests to the same worker (HTTP/2 multiplexes them). A channel
    is closed only when no request uses it: when it falls out of the cache (least recently used,
    beyond `max_channels`) or is discarded after its worker became unreachable, it is retired and
    closed by its last user.
    """

    def __init__(
        self,
        max_channels: int,
        *,
        connect: Callable[[str], grpc.aio.Channel] = open_channel,
    ) -> None:
        self._max = max_channels
        self._connect = connect
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._retired: set[_Entry] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    async def acquire(self, address: str) -> WorkerLease:
        if self._closed:
            raise RuntimeError("worker channels are closed")
        entry = self._entries.get(address)
        if entry is None:
            entry = _Entry(address, self._connect(address))
            self._entries[address] = entry
            entry.users += 1
            await self._trim()
        else:
            self._entries.move_to_end(address)
            entry.users += 1
        return WorkerLease(self, entry)

    async def discard(self, address: str) -> None:
        """Forget the channel so the next request to `address` connects afresh.

        A channel whose connection failed waits out gRPC's reconnect backoff; a worker restarted
        on the same address would be refused until then.
        """
        entry = self._entries.pop(address, None)
        if entry is not None:
            await self._retire(entry)

    async def close(self) -> None:
        self._closed = True
        entries = [*self._entries.values(), *self._retired]
        self._entries.clear()
        self._retired.clear()
        for entry in entries:
            await entry.channel.close()

    async def _release(self, entry: _Entry) -> None:
        entry.users -= 1
        if entry.retired and entry.users == 0:
            self._retired.discard(entry)
            await entry.channel.close()

    async def _trim(self) -> None:
        excess = len(self._entries) - self._max
        if excess <= 0:
            return
        idle = [entry for entry in self._entries.values() if entry.users == 0][:excess]
        for entry in idle:
            del self._entries[entry.address]
        for entry in idle:
            await entry.channel.close()
        if len(self._entries) > self._max:
            # Every cached channel is busy; the busy count is bounded by in-flight requests, and
            # the next acquire trims again once some are idle.
            _log.debug("worker channel cache over its limit: %d busy", len(self._entries))

    async def _retire(self, entry: _Entry) -> None:
        if entry.users == 0:
            await entry.channel.close()
        else:
            entry.retired = True
            self._retired.add(entry)
