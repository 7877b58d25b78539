"""The simulated engine and its backend: a Load sleeps WORKER_SIM_LOAD_TIME, nothing else runs."""

from __future__ import annotations

import asyncio

from services.common.clock import Clock, SystemClock
from services.worker.engine import RunnerLaunch
from services.worker.simulated.serving import SimulatedServer, SimulationSettings

__all__ = ["SimulatedBackend", "SimulatedEngine"]


class SimulatedBackend:
    def __init__(self, server: SimulatedServer, load_time: float) -> None:
        self._server = server
        self._load_time = load_time
        self._stopped = asyncio.Event()

    @property
    def client(self) -> SimulatedServer:
        return self._server

    @property
    def pid(self) -> int | None:
        return None

    async def start(self) -> None:
        await asyncio.sleep(self._load_time)

    async def wait_exit(self) -> str:
        # A simulation never crashes by itself; this returns only once stopped.
        await self._stopped.wait()
        return "the simulated runner stopped"

    async def stop(self) -> None:
        self._server.close()
        self._stopped.set()


class SimulatedEngine:
    """No process and no blob download: the weights' size is all it takes from the model."""

    def __init__(self, settings: SimulationSettings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()

    def slots(self, requested: int) -> int:
        return requested or self._settings.default_parallel

    async def prepare(self, launch: RunnerLaunch) -> SimulatedBackend:
        server = SimulatedServer(
            alias=launch.reference,
            slots=self.slots(launch.config.parallel),
            context_size=launch.config.context_size,
            settings=self._settings,
            clock=self._clock,
            id_prefix=f"sim{launch.generation}",
        )
        return SimulatedBackend(server, self._settings.load_time)
