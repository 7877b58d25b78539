"""The scheduler's operations, in domain terms: what each RPC does, without any proto.

`ControlPlane` composes the owners of state (membership, leases, loader) and the policies. Every
state change happens between awaits, so an Assign that routes and takes a lease does so in one
step of the event loop, and no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.clock import Clock
from services.scheduler.config import SchedulerSettings
from services.scheduler.errors import InvalidRequest, NoWorkerAvailable, SchedulerError
from services.scheduler.keepalive import Reaper
from services.scheduler.leases import LeaseTable
from services.scheduler.loader import Loader
from services.scheduler.membership import Membership
from services.scheduler.resolver import ModelResolver, ResolvedModel, normalize_reference
from services.scheduler.routing import RouteRequest, RoutingPolicy, least_loaded
from services.scheduler.snapshot import (
    ClusterSnapshot,
    RunnerReport,
    RunnerState,
    RunnerView,
    WorkerSpec,
)
from services.scheduler.workers import WorkerClient

__all__ = ["Assignment", "ControlPlane", "PlacementStatus"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    lease_id: str
    worker_id: str
    worker_address: str
    model_id: str
    reference: str


@dataclass(frozen=True)
class PlacementStatus:
    runner: RunnerView
    # Unix seconds; None when never used / never expiring.
    last_used: float | None
    expires: float | None


class ControlPlane:
    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        resolver: ModelResolver,
        workers: WorkerClient,
        clock: Clock,
        policy: RoutingPolicy = least_loaded,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._workers = workers
        self._clock = clock
        self._policy = policy
        self.membership = Membership(
            worker_timeout=settings.worker_timeout, confirm_grace=settings.heartbeat_interval
        )
        self.leases = LeaseTable(
            lease_timeout=settings.lease_timeout, max_leases=settings.max_leases
        )
        self.loader = Loader(
            membership=self.membership,
            workers=workers,
            clock=clock,
            load_timeout=settings.load_timeout,
            max_waiting=settings.max_waiting_per_model,
            rpc_timeout=settings.rpc_timeout,
        )
        self.reaper = Reaper(
            membership=self.membership,
            leases=self.leases,
            loader=self.loader,
            clock=clock,
            keep_alive=settings.keep_alive,
        )

    def snapshot(self) -> ClusterSnapshot:
        return self.membership.snapshot(self._clock.monotonic(), self.leases.in_flight())

    # Workers ---------------------------------------------------------------------------------

    async def register(self, spec: WorkerSpec, runners: Sequence[RunnerReport]) -> None:
        if not spec.worker_id.strip():
            raise InvalidRequest("worker_id is required")
        if not spec.address.strip():
            raise InvalidRequest(f"worker {spec.worker_id} did not say its address")
        previous = self.membership.register(spec, runners, self._clock.monotonic())
        _log.info(
            "worker %s registered at %s with %d runner(s)%s",
            spec.worker_id,
            spec.address,
            len(runners),
            " (replacing its previous entry)" if previous else "",
        )
        if previous is not None and previous.address != spec.address:
            self.leases.drop_worker(spec.worker_id)
            await self._discard_address(previous.address)

    def heartbeat(
        self, worker_id: str, runners: Sequence[RunnerReport], memory_free_bytes: int
    ) -> bool:
        known = self.membership.heartbeat(
            worker_id, runners, memory_free_bytes, self._clock.monotonic()
        )
        if not known:
            _log.info("heartbeat from unknown worker %s: asking it to register", worker_id)
        return known

    # Requests --------------------------------------------------------------------------------

    async def assign(
        self, model: str, *, affinity_key: str = "", timeout: float | None = None
    ) -> Assignment:
        """A lease on a READY replica of `model`, loading it first if no worker has it.

        `timeout` is what is left of the caller's deadline; the load wait is bounded by it and
        by the load timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        rpc_timeout = self._settings.rpc_timeout
        resolved = await self._resolver.resolve(
            model, timeout=rpc_timeout if timeout is None else min(rpc_timeout, timeout)
        )
        assignment = self._route(resolved, affinity_key)
        if assignment is not None:
            return assignment
        wait = self._settings.load_timeout
        if deadline is not None:
            wait = min(wait, deadline - loop.time())
        await self.loader.ensure_loaded(resolved, self.snapshot(), timeout=wait)
        assignment = self._route(resolved, affinity_key)
        if assignment is None:
            raise NoWorkerAvailable(f"{resolved.reference} was loaded but its runner went away")
        return assignment

    def release(self, lease_id: str, *, runner_failed: bool = False) -> None:
        lease = self.leases.release(lease_id)
        self.membership.touch(lease.worker_id, lease.model_id, self._clock.monotonic())
        if runner_failed and self.membership.mark_failed(
            lease.worker_id, lease.model_id, lease.generation, "a request saw the runner fail"
        ):
            _log.warning(
                "runner %s on worker %s failed during a request: no longer routed to",
                lease.model_id,
                lease.worker_id,
            )
        self.reaper.poke()

    # Status and operator actions -------------------------------------------------------------

    def placements(self) -> list[PlacementStatus]:
        now = self._clock.monotonic()
        to_wall = self._clock.wall() - now
        keep_alive = self._settings.keep_alive
        statuses = []
        for runner in self.membership.snapshot(now, self.leases.in_flight()).runners():
            last_used = None if runner.last_used is None else runner.last_used + to_wall
            expires = None if keep_alive is None else runner.idle_since + keep_alive + to_wall
            statuses.append(PlacementStatus(runner=runner, last_used=last_used, expires=expires))
        return statuses

    async def unload_models(self, *, everything: bool, models: Sequence[str]) -> int:
        """Unload idle runners of the named models (or of all); busy runners stay, as in DMR."""
        wanted: set[str] = set()
        if not everything:
            for text in models:
                wanted.update(await self._identities(text))
        snapshot = self.snapshot()
        targets = [
            runner
            for runner in snapshot.runners()
            if (everything or wanted & {runner.model_id, runner.report.reference})
            and not runner.busy
            and not runner.pending
            and runner.state is not RunnerState.STARTING
            and not self.loader.busy(runner.model_id)
        ]
        return await self.loader.unload(targets)

    # Maintenance -----------------------------------------------------------------------------

    async def sweep(self, now: float) -> None:
        """Forget dead workers (and their leases), and leases never released."""
        dead = self.membership.expire_dead(now)
        for spec in dead:
            dropped = self.leases.drop_worker(spec.worker_id)
            if dropped:
                _log.warning("dropped %d lease(s) of dead worker %s", len(dropped), spec.worker_id)
            await self._discard_address(spec.address)
        expired = self.leases.expire(now)
        for lease in expired:
            _log.warning(
                "lease %s for %s on worker %s expired without a release",
                lease.lease_id,
                lease.model_id,
                lease.worker_id,
            )
            self.membership.touch(lease.worker_id, lease.model_id, now)
        if dead or expired:
            self.reaper.poke()

    async def aclose(self) -> None:
        self.reaper.stop()
        await self.loader.aclose()
        await self._workers.aclose()
        await self._resolver.aclose()

    # Internals -------------------------------------------------------------------------------

    def _route(self, model: ResolvedModel, affinity_key: str) -> Assignment | None:
        now = self._clock.monotonic()
        snapshot = self.membership.snapshot(now, self.leases.in_flight())
        chosen = self._policy(
            snapshot.replicas(model.model_id),
            RouteRequest(model_id=model.model_id, affinity_key=affinity_key),
        )
        if chosen is None:
            return None
        lease = self.leases.create(chosen.worker_id, model.model_id, chosen.report.generation, now)
        self.membership.touch(chosen.worker_id, model.model_id, now, assigned=True)
        return Assignment(
            lease_id=lease.lease_id,
            worker_id=chosen.worker_id,
            worker_address=chosen.worker_address,
            model_id=model.model_id,
            reference=model.reference,
        )

    async def _identities(self, text: str) -> set[str]:
        """Ids and references a user's model string may match, even for a model the registry no
        longer has (it may still be loaded)."""
        names = {text.strip()}
        try:
            names.add(normalize_reference(text))
            resolved = await self._resolver.resolve(text, timeout=self._settings.rpc_timeout)
        except SchedulerError:
            return names
        return names | {resolved.model_id, resolved.reference}

    async def _discard_address(self, address: str) -> None:
        if all(worker.address != address for worker in self.snapshot().workers):
            await self._workers.discard(address)
