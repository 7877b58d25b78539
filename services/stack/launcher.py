"""Starts registry, scheduler, worker and gateway in dependency order and stops them in reverse.

Used by `make run` and by the integration tests, so both exercise the same start-up path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc
import httpx

from modelrunner.v1 import registry_pb2, registry_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.common.grpc_client import open_channel
from services.common.health_client import NotServing, wait_until_serving
from services.common.reference import parse_reference
from services.stack.config import StackSettings
from services.stack.processes import ServiceProcess

__all__ = ["LocalStack", "StackError"]

_log = logging.getLogger(__name__)
_PACKAGE_TIMEOUT = 600.0
# Readiness polling (the worker's registration, the gateway's HTTP answer).
_POLL_INTERVAL = 0.05


class StackError(RuntimeError):
    """A service failed to start; the message carries the end of its log."""


class LocalStack:
    def __init__(
        self,
        settings: StackSettings,
        environ: Mapping[str, str],
        bundled_gguf: Path | None = None,
    ) -> None:
        """`bundled_gguf` (an absolute path) is packaged as `settings.bundled_model` on start
        unless the store already has that tag."""
        self.settings = settings
        self._bundled_gguf = bundled_gguf
        # `model-cli logs` merges the services' text lines by time; LOG_FORMAT=json still wins.
        base = {"LOG_FORMAT": "text", **environ}
        s = settings
        logs = s.log_dir
        self.registry = ServiceProcess(
            "registry",
            "services.registry",
            {
                **base,
                "REGISTRY_LISTEN_ADDRESS": s.registry_address,
                "MODELS_PATH": str(s.models_path),
            },
            logs / "registry.log",
        )
        self.scheduler = ServiceProcess(
            "scheduler",
            "services.scheduler",
            {
                **base,
                "SCHEDULER_LISTEN_ADDRESS": s.scheduler_address,
                "REGISTRY_ADDRESS": s.registry_address,
            },
            logs / "scheduler.log",
        )
        self.worker = ServiceProcess(
            "worker",
            "services.worker",
            {
                **base,
                "WORKER_LISTEN_ADDRESS": s.worker_address,
                "WORKER_ADVERTISE_ADDRESS": s.worker_address,
                "WORKER_CACHE_PATH": str(s.worker_cache_path),
                "REGISTRY_ADDRESS": s.registry_address,
                "SCHEDULER_ADDRESS": s.scheduler_address,
            },
            logs / "worker.log",
        )
        self.gateway = ServiceProcess(
            "gateway",
            "services.gateway",
            {
                **base,
                "MODEL_RUNNER_PORT": str(s.gateway_port),
                "GATEWAY_LISTEN_HOST": s.gateway_host,
                "REGISTRY_ADDRESS": s.registry_address,
                "SCHEDULER_ADDRESS": s.scheduler_address,
            },
            logs / "gateway.log",
        )

    @property
    def services(self) -> tuple[ServiceProcess, ...]:
        return (self.registry, self.scheduler, self.worker, self.gateway)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"

    async def start(self) -> None:
        """Start every service and wait until each is ready; on failure stop what started.

        Registry, scheduler and worker start together (the worker retries its registration until
        the scheduler answers); the bundled model is packaged before the gateway opens, so the
        first request a user sends already finds it.
        """
        backends = (
            (self.registry, self.settings.registry_address),
            (self.scheduler, self.settings.scheduler_address),
            (self.worker, self.settings.worker_address),
        )
        try:
            for service, _ in backends:
                await service.start()
            await asyncio.gather(
                *(
                    wait_until_serving(
                        address,
                        timeout=self.settings.ready_timeout,
                        gone=service.exit_reason,
                        security=self.settings.security,
                    )
                    for service, address in backends
                )
            )
            for service, address in backends:
                _log.info("%s ready on %s (pid %s)", service.name, address, service.pid)
            # Serving is not enough: until the worker has registered, the scheduler answers
            # every request "no worker available".
            await self._wait_worker_registered()
            if self._bundled_gguf is not None:
                await self.ensure_model(self._bundled_gguf, self.settings.bundled_model)
            await self.gateway.start()
            await self._wait_gateway()
            _log.info("gateway ready on %s (pid %s)", self.gateway_url, self.gateway.pid)
        except (NotServing, StackError) as exc:
            await self.stop()
            raise StackError(str(exc)) from exc

    async def _wait_worker_registered(self) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        async with open_channel(
            self.settings.scheduler_address, security=self.settings.security
        ) as channel:
            scheduler = scheduler_pb2_grpc.SchedulerStub(channel)
            while True:
                reason = self.worker.exit_reason()
                if reason is not None:
                    raise NotServing(f"worker: {reason}")
                try:
                    reply = await scheduler.ListWorkers(
                        scheduler_pb2.ListWorkersRequest(), timeout=1.0
                    )
                    if any(
                        status.alive and status.worker.address == self.settings.worker_address
                        for status in reply.workers
                    ):
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise NotServing(
                        f"the worker did not register with the scheduler within "
                        f"{self.settings.ready_timeout:.0f}s"
                    )
                await asyncio.sleep(_POLL_INTERVAL)

    async def _wait_gateway(self) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                reason = self.gateway.exit_reason()
                if reason is not None:
                    raise NotServing(reason)
                try:
                    if (await client.get(self.gateway_url + "/")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise NotServing(f"gateway not answering on {self.gateway_url}")
                await asyncio.sleep(_POLL_INTERVAL)

    async def ensure_model(self, gguf: Path, reference: str) -> bool:
        """Package `gguf` (an absolute path) into the store as `reference` unless it is there; True if packaged."""
        async with open_channel(
            self.settings.registry_address, security=self.settings.security
        ) as channel:
            registry = registry_pb2_grpc.RegistryStub(channel)
            wanted = parse_reference(reference).familiar
            try:
                model = await registry.InspectModel(
                    registry_pb2.InspectModelRequest(reference=wanted), timeout=10.0
                )
                # InspectModel also matches partial names; only an exact tag counts as present.
                if wanted in model.tags:
                    return False
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise StackError(f"registry: {exc.details()}") from exc
            _log.info("packaging %s as %s (first run only)", gguf, reference)
            try:
                await registry.Package(
                    registry_pb2.PackageRequest(gguf_path=str(gguf), tag=reference),
                    timeout=_PACKAGE_TIMEOUT,
                )
            except grpc.aio.AioRpcError as exc:
                raise StackError(f"packaging {gguf} failed: {exc.details()}") from exc
            return True

    async def wait_any_exit(self) -> ServiceProcess:
        """Returns the first service whose process ends."""
        waits = {asyncio.ensure_future(s.wait()): s for s in self.services}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for future in waits:
                future.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def stop(self) -> None:
        """Stop in reverse order so nothing routes to a service that is already gone."""
        for service in reversed(self.services):
            await service.stop(self.settings.stop_timeout)

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
