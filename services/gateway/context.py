"""The routes' one dependency: settings plus the clients the app's lifespan opens and closes.

Created by the app factory and handed to each router factory, so there is no module-level state
and no `app.state` lookup; the clients exist only between lifespan start and stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import grpc

from services.common.clock import Clock, SystemClock
from services.common.grpc_client import open_channel
from services.common.request_id import request_id_client_interceptors
from services.gateway.clients import RegistryClient, SchedulerClient, WorkerChannels
from services.gateway.config import GatewaySettings
from services.gateway.inference import Inference
from services.gateway.metrics.families import GatewayMetrics

__all__ = ["GatewayContext"]


@dataclass(frozen=True)
class _Open:
    registry_channel: grpc.aio.Channel
    scheduler_channel: grpc.aio.Channel
    registry: RegistryClient
    scheduler: SchedulerClient
    workers: WorkerChannels
    inference: Inference


class GatewayContext:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        version: str,
        clock: Clock | None = None,
        connect: Callable[[str], grpc.aio.Channel] | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """`connect`: how channels to the registry, scheduler and workers are opened; by default
        with the settings' internal security (mutual TLS, token), and carrying the id of the
        request each call is made for (request_ids.py)."""
        self.settings = settings
        self.version = version
        self._clock = clock or SystemClock()
        # The gateway's own metrics; None when DISABLE_METRICS is set.
        self.metrics = metrics
        self._connect = connect or partial(
            open_channel,
            security=settings.security,
            interceptors=request_id_client_interceptors(),
        )
        self._open: _Open | None = None

    async def start(self) -> None:
        if self._open is not None:
            raise RuntimeError("gateway context already started")
        settings = self.settings
        registry_channel = self._connect(settings.registry_address)
        scheduler_channel = self._connect(settings.scheduler_address)
        scheduler = SchedulerClient(scheduler_channel, timeout=settings.rpc_timeout)
        workers = WorkerChannels(settings.worker_channels, connect=self._connect)
        self._open = _Open(
            registry_channel=registry_channel,
            scheduler_channel=scheduler_channel,
            registry=RegistryClient(registry_channel, timeout=settings.rpc_timeout),
            scheduler=scheduler,
            workers=workers,
            inference=Inference(settings, scheduler, workers, self._clock, self.metrics),
        )

    async def stop(self) -> None:
        opened, self._open = self._open, None
        if opened is None:
            return
        await opened.workers.close()
        await opened.scheduler_channel.close()
        await opened.registry_channel.close()

    @property
    def _started(self) -> _Open:
        if self._open is None:
            raise RuntimeError("gateway context used outside the app's lifespan")
        return self._open

    @property
    def registry(self) -> RegistryClient:
        return self._started.registry

    @property
    def scheduler(self) -> SchedulerClient:
        return self._started.scheduler

    @property
    def workers(self) -> WorkerChannels:
        return self._started.workers

    @property
    def inference(self) -> Inference:
        return self._started.inference
