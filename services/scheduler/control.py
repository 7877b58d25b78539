"""The scheduler's operations, in domain terms: what each RPC does, without any proto.

`ControlPlane` composes the owners of state (membership, leases, loader, queue, configurations),
the replica manager (where and how many replicas run: replicas.py) and the dispatcher (who gets
a free slot now: dispatch.py). Every state change happens between awaits, so no lock is needed.

Admission is bounded: at most `max_assigns_in_flight` Assigns are answered at once, waiting ones
included; beyond that an Assign is refused at once (QueueFull), so a flood of requests cannot
take the event loop from heartbeats. Requests over capacity wait in their model's queue instead
of piling up inside llama-server, so the scheduler sees the real demand and can add replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

from services.common.clock import Clock
from services.scheduler.assignment import Assignment
from services.scheduler.config import SchedulerSettings
from services.scheduler.dispatch import Dispatcher
from services.scheduler.errors import (
    InvalidRequest,
    ModelBusy,
    QueueFull,
    SchedulerError,
    WorkersBusy,
)
from services.scheduler.keepalive import KeepAlives, Reaper
from services.scheduler.lag import LagTracker
from services.scheduler.leases import LeaseTable
from services.scheduler.loader import Loader, LoadOutcome
from services.scheduler.membership import Membership
from services.scheduler.metrics import SchedulerMetrics, UnloadReason
from services.scheduler.model_configs import (
    ConfigEntry,
    ConfigStore,
    ModelRuntimeConfig,
)
from services.scheduler.queue import RequestQueue
from services.scheduler.replicas import ReplicaManager
from services.scheduler.resolver import ModelResolver, normalize_reference
from services.scheduler.routing import RouteRequest, RoutingPolicy, make_policy
from services.scheduler.snapshot import ClusterSnapshot, RunnerReport, RunnerState, WorkerSpec
from services.scheduler.status import (
    PlacementStatus,
    WorkerStatus,
    placement_statuses,
    worker_statuses,
)
from services.scheduler.workers import WorkerClient

__all__ = ["Assignment", "ControlPlane", "PlacementStatus", "WorkerStatus"]

_log = logging.getLogger(__name__)


class ControlPlane:
    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        resolver: ModelResolver,
        workers: WorkerClient,
        clock: Clock,
        configs: ConfigStore | None = None,
        policy: RoutingPolicy | None = None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = metrics if metrics is not None else SchedulerMetrics()
        self._resolver = resolver
        self._workers = workers
        self._clock = clock
        self.configs = configs if configs is not None else ConfigStore(None)
        self.policy = policy or make_policy(
            settings.routing,
            affinity_entries=settings.affinity_entries,
            max_imbalance=settings.affinity_max_imbalance,
        )
        self.membership = Membership(
            worker_timeout=settings.worker_timeout, confirm_grace=settings.heartbeat_interval
        )
        self.leases = LeaseTable(
            lease_timeout=settings.lease_timeout, max_leases=settings.max_leases
        )
        self.queue: RequestQueue[Assignment] = RequestQueue(
            max_waiting=settings.max_waiting_per_model
        )
        self.loader = Loader(
            membership=self.membership,
            workers=workers,
            clock=clock,
            load_timeout=settings.load_timeout,
            rpc_timeout=settings.rpc_timeout,
            on_finished=self._load_finished,
            metrics=self.metrics,
        )
        self.keep_alives = KeepAlives(default=settings.keep_alive, configs=self.configs)
        self.replicas = ReplicaManager(
            settings,
            membership=self.membership,
            leases=self.leases,
            loader=self.loader,
            queue=self.queue,
            configs=self.configs,
            resolver=resolver,
            clock=clock,
            snapshot=self.snapshot,
            metrics=self.metrics,
        )
        self.dispatcher = Dispatcher(
            membership=self.membership,
            leases=self.leases,
            queue=self.queue,
            replicas=self.replicas,
            policy=self.policy,
            clock=clock,
        )
        # How late the event loop runs; the dead-worker sweep forgives it (lag.py).
        self.lag = LagTracker(window=settings.worker_timeout)
        self._assigning = 0
        self.reaper = Reaper(
            membership=self.membership,
            leases=self.leases,
            clock=clock,
            keep_alive_for=self.keep_alive_for,
            protected=self.replicas.protected_from_idle_unload,
            unload=lambda runners: self.loader.unload(runners, reason=UnloadReason.IDLE),
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
            "worker %s registered at %s with tags %s and %d runner(s)%s",
            spec.worker_id,
            spec.address,
            dict(spec.tags),
            len(runners),
            " (replacing its previous entry)" if previous else "",
        )
        if previous is not None and previous.address != spec.address:
            self.leases.drop_worker(spec.worker_id)
            await self._discard_address(previous.address)
        elif previous is not None:
            # Restarted on the same address before the sweep saw it die: the requests of the old
            # process are gone, and their leases would hold its slots until SCHEDULER_LEASE_TIMEOUT.
            dropped = self.leases.drop_missing(
                spec.worker_id, {(r.model_id, r.generation) for r in runners}
            )
            if dropped:
                _log.warning(
                    "dropped %d lease(s) of worker %s on runners it no longer has",
                    len(dropped),
                    spec.worker_id,
                )
        self.dispatcher.dispatch_all()

    def heartbeat(
        self,
        worker_id: str,
        runners: Sequence[RunnerReport],
        memory_free_bytes: int,
        *,
        cache_bytes: int = 0,
        draining: bool = False,
    ) -> bool:
        known = self.membership.heartbeat(
            worker_id,
            runners,
            memory_free_bytes,
            self._clock.monotonic(),
            cache_bytes=cache_bytes,
            draining=draining,
        )
        if not known:
            _log.info("heartbeat from unknown worker %s: asking it to register", worker_id)
            return False
        for report in runners:
            if report.state in (RunnerState.FAILED, RunnerState.STOPPED):
                self.policy.forget(worker_id, report.model_id)
        self.dispatcher.dispatch_all()
        return True

    # Requests --------------------------------------------------------------------------------

    async def assign(
        self,
        model: str,
        *,
        affinity_key: str = "",
        prefix_hashes: Sequence[int] = (),
        priority: int = 0,
        required_tags: Mapping[str, str] | None = None,
        keep_alive: float | None = None,
        timeout: float | None = None,
    ) -> Assignment:
        """A lease on a replica of `model` with a free slot: at once if there is one, else after
        waiting in the model's queue (loading the model first if nothing serves it).

        `timeout` is what is left of the caller's deadline; the wait is bounded by it, by the
        queue timeout and, while the model loads, by the load timeout. `keep_alive` (seconds;
        negative: never unload) overrides the model's keep-alive from now on, as Ollama's does.
        """
        with self.metrics.observe_assign(self._clock):
            limit = self._settings.max_assigns_in_flight
            if self._assigning >= limit:
                raise QueueFull(f"the scheduler is answering {limit} requests already; retry later")
            self._assigning += 1
            try:
                return await self._assign(
                    model,
                    affinity_key=affinity_key,
                    prefix_hashes=tuple(prefix_hashes),
                    priority=priority,
                    required_tags=required_tags,
                    keep_alive=keep_alive,
                    timeout=timeout,
                )
            finally:
                self._assigning -= 1

    async def _assign(
        self,
        model: str,
        *,
        affinity_key: str,
        prefix_hashes: tuple[int, ...],
        priority: int,
        required_tags: Mapping[str, str] | None,
        keep_alive: float | None,
        timeout: float | None,
    ) -> Assignment:
        loop = asyncio.get_running_loop()
        started = loop.time()
        rpc_timeout = self._settings.rpc_timeout
        resolved = await self._resolver.resolve(
            model, timeout=rpc_timeout if timeout is None else min(rpc_timeout, timeout)
        )
        model_id = resolved.model_id
        self.replicas.models[model_id] = resolved
        if keep_alive is not None:
            self.keep_alives.request(model_id, keep_alive)
        tags = self.replicas.required_tags(model_id, required_tags)
        request = RouteRequest(
            model_id=model_id, affinity_key=affinity_key, prefix_hashes=prefix_hashes
        )
        patience = self._settings.affinity_wait
        if self.queue.waiting(model_id) == 0:
            assignment = self.dispatcher.route(resolved, request, tags, patient=patience > 0)
            if assignment is not None:
                return assignment
        with contextlib.suppress(WorkersBusy):
            # The request waits for a busy worker to make room; the autoscaler places it then.
            self.replicas.ensure_replica(resolved, tags)
        waiter = self.dispatcher.enqueue(model_id, request, priority, tags, patience=patience)
        enqueued_at = self._clock.monotonic()
        wait = self._settings.queue_timeout
        if self.loader.busy(model_id):
            wait += self._settings.load_timeout
        if timeout is not None:
            wait = min(wait, timeout - (loop.time() - started))
        try:
            return await self.dispatcher.wait(
                waiter, resolved, max(wait, 0.0), loading=self.loader.busy, give_back=self.release
            )
        finally:
            self.metrics.queue_waited(resolved.reference, self._clock.monotonic() - enqueued_at)

    def release(self, lease_id: str, *, runner_failed: bool = False) -> None:
        lease = self.leases.release(lease_id)
        now = self._clock.monotonic()
        self.membership.touch(lease.worker_id, lease.model_id, now)
        if runner_failed and self.membership.mark_failed(
            lease.worker_id, lease.model_id, lease.generation, "a request saw the runner fail"
        ):
            self.policy.forget(lease.worker_id, lease.model_id)
            _log.warning(
                "runner %s on worker %s failed during a request: no longer routed to",
                lease.model_id,
                lease.worker_id,
            )
        self.dispatcher.dispatch(lease.model_id)
        keep_alive = self.keep_alive_for(lease.model_id)
        if keep_alive is not None and not self.leases.holds(lease.worker_id, lease.model_id):
            self.reaper.due_by(now + keep_alive)

    # Configuration ---------------------------------------------------------------------------

    def keep_alive_for(self, model_id: str) -> float | None:
        """Seconds an idle runner of the model stays loaded; None: never unloaded."""
        return self.keep_alives.for_model(model_id)

    async def configure(self, model: str, config: ModelRuntimeConfig) -> ConfigEntry:
        """Store the model's configuration; idle runners started with the old one are unloaded,
        so the next load (or the autoscaler, for min_replicas) uses the new one."""
        config.validate()
        resolved = await self._resolver.resolve(model, timeout=self._settings.rpc_timeout)
        runners = self.replicas.replicas(resolved.model_id)
        busy = [r for r in runners if r.busy or r.pending or r.state is RunnerState.STARTING]
        if busy or self.queue.waiting(resolved.model_id):
            raise ModelBusy(
                f"{resolved.reference} is serving or loading on worker "
                f"{busy[0].worker_id if busy else '?'}; configure it when it is idle"
            )
        entry = ConfigEntry(model_id=resolved.model_id, reference=resolved.reference, config=config)
        await self.configs.put(entry)
        self.replicas.models[resolved.model_id] = resolved
        _log.info("configured %s: %s", resolved.reference, config)
        if runners:
            await self.loader.unload(runners, reason=UnloadReason.RECONFIGURED)
        return entry

    async def model_configs(self, model: str = "") -> list[ConfigEntry]:
        if not model.strip():
            return self.configs.entries()
        resolved = await self._resolver.resolve(model, timeout=self._settings.rpc_timeout)
        entry = self.configs.get(resolved.model_id)
        return [entry] if entry else []

    # Status and operator actions -------------------------------------------------------------

    def placements(self) -> list[PlacementStatus]:
        snapshot = self.snapshot()
        return placement_statuses(
            snapshot,
            to_wall=self._clock.wall() - snapshot.taken_at,
            keep_alive_for=self.keep_alive_for,
            waiting=self.queue.waiting,
        )

    def workers(self) -> list[WorkerStatus]:
        snapshot = self.snapshot()
        return worker_statuses(snapshot, to_wall=self._clock.wall() - snapshot.taken_at)

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
            and not self.queue.waiting(runner.model_id)
        ]
        return await self.loader.unload(targets, reason=UnloadReason.OPERATOR)

    # Maintenance -----------------------------------------------------------------------------

    async def sweep(self, now: float) -> None:
        """Forget dead workers (and their leases), and leases never released. A worker gets
        the event loop's recent lag on top of the worker timeout (lag.py)."""
        dead = self.membership.expire_dead(now, grace=self.lag.grace(now))
        self.metrics.workers_lost(len(dead))
        for spec in dead:
            dropped = self.leases.drop_worker(spec.worker_id)
            if dropped:
                _log.warning("dropped %d lease(s) of dead worker %s", len(dropped), spec.worker_id)
            await self._discard_address(spec.address)
        expired = self.leases.expire(now)
        self.metrics.leases_expired(len(expired))
        for lease in expired:
            _log.warning(
                "lease %s for %s on worker %s expired without a release",
                lease.lease_id,
                lease.model_id,
                lease.worker_id,
            )
            self.membership.touch(lease.worker_id, lease.model_id, now)
        if dead or expired:
            self.dispatcher.dispatch_all()
            self.reaper.poke()
        self.keep_alives.prune(
            lambda model_id: bool(self.replicas.replicas(model_id) or self.queue.waiting(model_id))
        )

    async def autoscale_once(self, now: float) -> None:
        await self.replicas.autoscale_once(now)

    async def aclose(self) -> None:
        self.reaper.stop()
        await self.loader.aclose()
        await self._workers.aclose()
        await self._resolver.aclose()

    # Internals -------------------------------------------------------------------------------

    def _load_finished(self, outcome: LoadOutcome) -> None:
        model_id = outcome.model.model_id
        if outcome.error is None:
            self.dispatcher.dispatch(model_id)
            return
        if self.loader.busy(model_id) or any(r.routable for r in self.replicas.replicas(model_id)):
            return
        failed = self.queue.fail_all(model_id, outcome.error)
        if failed:
            _log.warning("%d request(s) for %s failed with the load", failed, model_id)

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
