"""The faults, each injected while the load's streams are in flight, and what each one left.

A scenario waits until streams are in flight (and, where it targets a worker, on that worker),
injects its fault, puts the stack back together the way an operator or a supervisor would
(restart the killed service), and lets the load finish. Its report counts every request by
outcome and says how long recovery took:

- recovery: from the fault to the end of the first request that was started after the fault
  and succeeded (clients back off after failures, so this includes their pacing);
- healthy again: from the fault until the stack serves a replica on every worker again
  (after the harness restarted what was killed);
- store intact: the registry's Verify re-hashed every blob and found none corrupt or missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.faults.load import LoadPlan, LoadProgress, Outcome, RequestResult, run_load
from tests.faults.stack import FaultStack
from tests.support.processes import wait_until

__all__ = [
    "SCENARIOS",
    "FaultRecord",
    "ScenarioReport",
    "in_flight",
    "kill_gateway",
    "kill_llama_server",
    "kill_scheduler",
    "kill_worker",
    "restored",
    "run_scenario",
]

_IN_FLIGHT_TIMEOUT = 120.0
_ORPHAN_TIMEOUT = 10.0
_EXIT_TIMEOUT = 30.0
_LEASE_TIMEOUT = 10.0


@dataclass
class FaultRecord:
    """What an injector did: when the fault happened, when the stack was whole again, notes."""

    fault_at: float = 0.0
    healthy_at: float | None = None
    notes: list[str] = field(default_factory=list)
    orphans: set[int] = field(default_factory=set)
    # False when what the fault interrupted (a pull) did not fail cleanly or did not recover.
    clean: bool = True
    # Requests whose stream was delivering at the moment of the fault.
    streaming: frozenset[int] = frozenset()


Injector = Callable[[FaultStack, LoadProgress], Awaitable[FaultRecord]]


@dataclass(frozen=True)
class ScenarioReport:
    name: str
    results: tuple[RequestResult, ...]
    record: FaultRecord
    store_intact: bool
    # Scheduler leases still held once the load had ended (lost leases).
    leases_left: int = 0

    def counts(self) -> Counter[Outcome]:
        return Counter(result.outcome for result in self.results)

    @property
    def recovery(self) -> float | None:
        after = [
            r.ended
            for r in self.results
            if r.started >= self.record.fault_at and r.outcome is Outcome.SUCCEEDED
        ]
        return min(after) - self.record.fault_at if after else None

    def failed_after_fault(self) -> list[RequestResult]:
        """Requests started after the fault that did not succeed."""
        return [
            r
            for r in self.results
            if r.started >= self.record.fault_at and r.outcome is not Outcome.SUCCEEDED
        ]

    def in_flight_at_fault(self) -> list[RequestResult]:
        return [r for r in self.results if r.index in self.record.streaming]

    @property
    def healthy_again(self) -> float | None:
        healthy = self.record.healthy_at
        return None if healthy is None else healthy - self.record.fault_at

    def row(self) -> list[str]:
        counts = self.counts()

        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        return [
            self.name,
            str(len(self.results)),
            str(counts[Outcome.SUCCEEDED]),
            str(counts[Outcome.FAILED_CLEAN]),
            str(counts[Outcome.HUNG]),
            str(counts[Outcome.BROKEN]),
            seconds(self.recovery),
            seconds(self.healthy_again),
            "yes" if self.store_intact else "NO",
        ]


async def in_flight(progress: LoadProgress) -> str:
    """Wait until a stream is delivering; returns the id of the worker serving it."""
    workers: list[str] = []

    def found() -> bool:
        workers[:] = [worker for worker in progress.streaming.values() if worker]
        return bool(workers)

    await wait_until(found, what="a stream in flight", timeout=_IN_FLIGHT_TIMEOUT)
    return workers[0]


async def restored(stack: FaultStack, record: FaultRecord) -> None:
    await stack.wait_ready()
    record.healthy_at = time.monotonic()


async def _gone(stack: FaultStack, pids: set[int], record: FaultRecord) -> None:
    """Give the killed worker's llama-servers a moment to die; note any that survive."""
    with contextlib.suppress(AssertionError):
        await wait_until(
            lambda: not stack.orphans(pids), what="llama-servers to exit", timeout=_ORPHAN_TIMEOUT
        )
    record.orphans = stack.orphans(pids)
    if record.orphans:
        record.notes.append(f"orphaned llama-servers: {sorted(record.orphans)}")


async def kill_worker(stack: FaultStack, progress: LoadProgress) -> FaultRecord:
    """kill -9 of a worker with a stream in flight; restarted once its runners are gone."""
    record = FaultRecord()
    target = await in_flight(progress)
    pids = stack.llama_servers(target)
    stack.kill(stack.workers[target])
    record.fault_at = time.monotonic()
    record.notes.append(f"killed {target} (llama-servers {sorted(pids)})")
    await _gone(stack, pids, record)
    await stack.restart(stack.workers[target])
    await restored(stack, record)
    return record


async def kill_llama_server(stack: FaultStack, progress: LoadProgress) -> FaultRecord:
    """kill -9 of the llama-server behind a stream in flight; its worker must cope."""
    record = FaultRecord()
    target = await in_flight(progress)
    pids = stack.llama_servers(target)
    assert pids, f"{target} has no llama-server"
    pid = min(pids)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    record.fault_at = time.monotonic()
    record.notes.append(f"killed llama-server {pid} of {target}")
    await restored(stack, record)
    return record


async def kill_scheduler(stack: FaultStack, progress: LoadProgress) -> FaultRecord:
    """kill -9 of the scheduler while streams are in flight; restarted at once."""
    record = FaultRecord()
    await in_flight(progress)
    stack.kill(stack.scheduler)
    record.fault_at = time.monotonic()
    record.streaming = frozenset(progress.streaming)
    record.notes.append(f"{len(record.streaming)} stream(s) in flight at the kill")
    await stack.restart(stack.scheduler)
    await restored(stack, record)
    return record


async def kill_gateway(stack: FaultStack, progress: LoadProgress) -> FaultRecord:
    """SIGTERM of the gateway: in-flight streams drain, new connections are refused; the
    harness starts a new gateway on the same port once the old one has exited."""
    record = FaultRecord()
    await in_flight(progress)
    stack.kill(stack.gateway, signal.SIGTERM)
    record.fault_at = time.monotonic()
    record.streaming = frozenset(progress.streaming)
    record.notes.append(f"{len(record.streaming)} stream(s) in flight at the SIGTERM")
    await asyncio.wait_for(stack.gateway.wait(), _EXIT_TIMEOUT)
    record.notes.append(f"old gateway exited after {time.monotonic() - record.fault_at:.1f}s")
    await stack.restart(stack.gateway)
    await restored(stack, record)
    return record


SCENARIOS: dict[str, Injector] = {
    "kill -9 worker": kill_worker,
    "kill -9 llama-server": kill_llama_server,
    "kill -9 scheduler": kill_scheduler,
    "SIGTERM gateway": kill_gateway,
}


async def run_scenario(
    stack: FaultStack, name: str, plan: LoadPlan, inject: Injector
) -> ScenarioReport:
    """Load + fault; returns once every request has ended and the store was verified."""
    await stack.wait_ready()
    progress = LoadProgress()
    async with asyncio.TaskGroup() as group:
        load = group.create_task(run_load(stack.gateway_url, plan, progress))
        record = await inject(stack, progress)
    results = load.result()
    retried = sum(1 for r in results if r.detail.startswith("retried"))
    if retried:
        record.notes.append(f"{retried} request(s) retried after a connection closed unanswered")
    with contextlib.suppress(AssertionError):
        # Workers report ends asynchronously; a lease still held after this is a leak.
        await wait_until(
            _no_leases(stack), what="every lease to be released", timeout=_LEASE_TIMEOUT
        )
    leases = await stack.leases_held()
    if leases:
        record.notes.append(f"{leases} lease(s) still held after the load ended")
    verify = await stack.verify_store()
    intact = verify.corrupt == 0 and verify.missing == 0 and verify.models > 0
    return ScenarioReport(name, tuple(results), record, intact, leases)


def _no_leases(stack: FaultStack) -> Callable[[], Awaitable[bool]]:
    async def none() -> bool:
        return await stack.leases_held() == 0

    return none
