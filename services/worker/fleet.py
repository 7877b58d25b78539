"""Many simulated workers in one process, for benchmarks and tests of the control plane.

Each worker is a real `WorkerNode` (Worker gRPC service on its own loopback port, its own id,
runner pool and membership loop) with the simulated engine, so the scheduler cannot tell them
from separate worker processes. They share one channel to the scheduler: one HTTP/2 connection
carries every heartbeat, which keeps idle workers cheap (measured with 2 s heartbeats against the
real scheduler: 100 workers 1.1% of one core and 60 MB, 1000 workers 9.7% and 117 MB).

    python -m services.worker.fleet --count 100 --memory 16GiB --tags accelerator=cpu

runs until SIGINT or SIGTERM; the scheduler and registry addresses default to SCHEDULER_ADDRESS
and REGISTRY_ADDRESS, the rates and load time to the WORKER_SIM_* settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType

import grpc

from modelrunner.v1 import scheduler_pb2_grpc
from services.common.env import SettingError, env_tags, parse_duration
from services.common.logs import configure_logging
from services.worker.channels import open_control_channel
from services.worker.config import SIMULATED_ENGINE, WorkerSettings
from services.worker.node import WorkerNode, simulation_settings
from services.worker.simulated.engine import SimulatedEngine
from services.worker.worker_metrics import WorkerMetrics

__all__ = ["FleetError", "SimulatedFleet", "SimulatedWorkerSpec", "main", "parse_size"]

_log = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes from "16GiB", "512MiB", "8GB", "1000" (binary units with an i, decimal without)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"invalid size {text!r}; use e.g. 16GiB, 512MiB or a number of bytes")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    if unit == "b":
        return int(number)
    base = 1024 if "i" in unit else 1000
    return int(number * base ** _SIZE_POWERS[unit[0]])


class FleetError(RuntimeError):
    """The fleet could not start (a worker did not register in time)."""


@dataclass(frozen=True)
class SimulatedWorkerSpec:
    worker_id: str
    memory_bytes: int
    # Merged over {"accelerator": "cpu"}, as a simulated worker process does.
    tags: Mapping[str, str] = field(default_factory=dict)
    tokens_per_second: float = 50.0
    prompt_tokens_per_second: float = 1000.0
    load_time: float = 1.0

    def __post_init__(self) -> None:
        if not self.worker_id:
            raise ValueError("a simulated worker needs an id")
        if self.memory_bytes <= 0:
            raise ValueError(f"{self.worker_id}: memory_bytes must be positive")
        if self.tokens_per_second <= 0 or self.prompt_tokens_per_second <= 0:
            raise ValueError(f"{self.worker_id}: token rates must be positive")
        if self.load_time < 0:
            raise ValueError(f"{self.worker_id}: load_time must be >= 0")


class SimulatedFleet:
    """`async with SimulatedFleet(specs, ...) as fleet:` starts and registers every worker and
    stops them all (gracefully, with a farewell heartbeat) on exit."""

    def __init__(
        self,
        specs: Sequence[SimulatedWorkerSpec],
        *,
        scheduler_address: str,
        registry_address: str,
        heartbeat_interval: float = 5.0,
        settings: WorkerSettings | None = None,
        register_timeout: float = 30.0,
    ) -> None:
        """`settings` supplies every other worker knob (timeouts, WORKER_SIM_MAX_TOKENS, ...);
        `registry_address` is recorded for completeness: simulated workers fetch no blobs."""
        ids = [spec.worker_id for spec in specs]
        duplicates = sorted({worker_id for worker_id in ids if ids.count(worker_id) > 1})
        if duplicates:
            raise ValueError(f"duplicate worker ids: {', '.join(duplicates)}")
        self._specs = tuple(specs)
        self._base = replace(
            settings or WorkerSettings(),
            engine=SIMULATED_ENGINE,
            scheduler_address=scheduler_address,
            registry_address=registry_address,
            heartbeat_interval=heartbeat_interval,
            listen_address="127.0.0.1:0",
            advertise_address="",
        )
        self._register_timeout = register_timeout
        self._nodes: dict[str, WorkerNode] = {}
        self._killed: set[str] = set()
        self._channel: grpc.aio.Channel | None = None

    @property
    def worker_ids(self) -> list[str]:
        return [spec.worker_id for spec in self._specs]

    def node(self, worker_id: str) -> WorkerNode:
        """The running worker (its pool and membership), for tests and benchmarks."""
        try:
            return self._nodes[worker_id]
        except KeyError:
            raise KeyError(f"no simulated worker {worker_id!r} in this fleet") from None

    def address(self, worker_id: str) -> str:
        """host:port of the worker's gRPC server, as it registered."""
        return f"127.0.0.1:{self.node(worker_id).server.port}"

    async def __aenter__(self) -> SimulatedFleet:
        base = self._base
        self._channel = open_control_channel(
            base.scheduler_address, base.retry_max_backoff, security=base.security
        )
        scheduler = scheduler_pb2_grpc.SchedulerStub(self._channel)
        # One set for the fleet: per node it would cost ~20 KB each (20 MB per 1000 workers).
        metrics = WorkerMetrics()
        try:
            for spec in self._specs:
                node = WorkerNode(
                    replace(base, worker_id=spec.worker_id, memory_bytes=spec.memory_bytes),
                    SimulatedEngine(
                        replace(
                            simulation_settings(base),
                            tokens_per_second=spec.tokens_per_second,
                            prompt_tokens_per_second=spec.prompt_tokens_per_second,
                            load_time=spec.load_time,
                        )
                    ),
                    scheduler,
                    tags={"accelerator": "cpu", **spec.tags},
                    metrics=metrics,
                )
                self._nodes[spec.worker_id] = node
                await node.server.start()
                node.start_membership()
            await self._wait_registered()
        except BaseException:
            await self._stop_all()
            raise
        _log.info("%d simulated workers registered", len(self._nodes))
        return self

    async def _wait_registered(self) -> None:
        waits = {
            worker_id: asyncio.ensure_future(node.membership.wait_registered())
            for worker_id, node in self._nodes.items()
        }
        try:
            _, pending = await asyncio.wait(waits.values(), timeout=self._register_timeout)
        finally:
            for wait in waits.values():
                wait.cancel()
            await asyncio.gather(*waits.values(), return_exceptions=True)
        if pending:
            missing = sorted(worker_id for worker_id, wait in waits.items() if wait in pending)
            raise FleetError(
                f"{len(missing)} simulated workers did not register with "
                f"{self._base.scheduler_address} within {self._register_timeout:g}s: "
                + ", ".join(missing[:10])
            )

    async def kill(self, worker_id: str) -> None:
        """Stop one worker abruptly: no farewell, streams cut, as if its process died."""
        node = self.node(worker_id)
        if worker_id in self._killed:
            return
        self._killed.add(worker_id)
        await node.stop_membership()
        await node.server.server.stop(None)
        await node.close(farewell=False)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_all()

    async def _stop_all(self) -> None:
        live = [n for worker_id, n in self._nodes.items() if worker_id not in self._killed]
        self._killed.update(self._nodes)
        results = await asyncio.gather(
            *(self._stop_node(node) for node in live), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                _log.error("stopping a simulated worker failed: %r", result)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _stop_node(self, node: WorkerNode) -> None:
        await node.stop_membership()
        await node.server.stop(self._base.shutdown_grace)
        await node.close(farewell=True)


def _parse_args(argv: Sequence[str] | None, base: WorkerSettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.worker.fleet",
        description="Run N simulated workers in one process until SIGINT/SIGTERM.",
    )
    parser.add_argument("--count", type=int, default=10, help="workers to run (default 10)")
    parser.add_argument("--memory", type=parse_size, default="16GiB", help="memory per worker")
    parser.add_argument("--tags", default="", help="worker tags, e.g. accelerator=cpu,zone=a")
    parser.add_argument("--id-prefix", default="sim", help="worker ids are <prefix>-000, ...")
    parser.add_argument("--tokens-per-second", type=float, default=base.sim_tokens_per_second)
    parser.add_argument(
        "--prompt-tokens-per-second", type=float, default=base.sim_prompt_tokens_per_second
    )
    parser.add_argument("--load-time", type=parse_duration, default=base.sim_load_time)
    parser.add_argument("--heartbeat-interval", type=parse_duration, default=None)
    parser.add_argument("--scheduler-address", default=base.scheduler_address)
    parser.add_argument("--registry-address", default=base.registry_address)
    args = parser.parse_args(argv)
    if args.count <= 0:
        parser.error("--count must be positive")
    try:
        args.tag_map = env_tags({"tags": args.tags}, "tags")
    except SettingError as exc:
        parser.error(str(exc))
    return args


async def _run(args: argparse.Namespace, base: WorkerSettings) -> None:
    width = max(3, len(str(args.count - 1)))
    specs = [
        SimulatedWorkerSpec(
            worker_id=f"{args.id_prefix}-{index:0{width}d}",
            memory_bytes=args.memory,
            tags=args.tag_map,
            tokens_per_second=args.tokens_per_second,
            prompt_tokens_per_second=args.prompt_tokens_per_second,
            load_time=args.load_time,
        )
        for index in range(args.count)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    heartbeat = args.heartbeat_interval or base.heartbeat_interval
    async with SimulatedFleet(
        specs,
        scheduler_address=args.scheduler_address,
        registry_address=args.registry_address,
        heartbeat_interval=heartbeat,
        settings=base,
    ) as fleet:
        first, last = fleet.worker_ids[0], fleet.worker_ids[-1]
        _log.info(
            "serving %d simulated workers (%s at %s ... %s at %s); Ctrl-C stops them",
            len(specs),
            first,
            fleet.address(first),
            last,
            fleet.address(last),
        )
        await stop.wait()
        _log.info("stopping the fleet")


def main(argv: Sequence[str] | None = None) -> None:
    base = WorkerSettings.from_env({**os.environ, "WORKER_ENGINE": SIMULATED_ENGINE})
    args = _parse_args(argv, base)
    configure_logging("fleet", base.log_level)
    asyncio.run(_run(args, base))


if __name__ == "__main__":
    main()
