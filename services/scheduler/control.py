"""The scheduler's operations, in domain terms: what each RPC does, without any proto.

`ControlPlane` composes the owners of state (membership, leases, loader, queue, configurations),
the replica manager (where and how many replicas run: replicas.py) and the routing policy. Every state change happens between
awaits: an Assign that finds a free slot takes its lease in one step of the event loop, and a
released slot is handed to the next waiter in the same step as the release. No lock is needed.

Capacity is counted in llama-server slots: a replica takes at most `parallel` leases; further
requests wait in the model's queue (priority order) instead of piling up inside llama-server, so
the scheduler sees the real demand and can add replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.clock import Clock
from services.scheduler.assignment import Assignment
from services.scheduler.config import SchedulerSettings
from services.scheduler.errors import (
    InvalidRequest,
    LoadTimeout,
    ModelBusy,
    QueueFull,
    SchedulerError,
)
from services.scheduler.keepalive import Reaper
from services.scheduler.leases import LeaseTable
from services.scheduler.loader import Loader, LoadOutcome
from services.scheduler.membership import Membership
from services.scheduler.metrics import SchedulerMetrics, UnloadReason
from services.scheduler.model_configs import (
    ConfigEntry,
    ConfigStore,
    ModelRuntimeConfig,
    effective_keep_alive,
)
from services.scheduler.queue import RequestQueue, Waiter
from services.scheduler.replicas import ReplicaManager
from services.scheduler.resolver import ModelResolver, ResolvedModel, normalize_reference
from services.scheduler.routing import RouteRequest, RoutingPolicy, make_policy
from services.scheduler.snapshot import (
    ClusterSnapshot,
    RunnerReport,
    RunnerState,
    RunnerView,
    WorkerSpec,
    WorkerView,
)
from services.scheduler.workers import WorkerClient

__all__ = ["Assignment", "ControlPlane", "PlacementStatus", "WorkerStatus"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacementStatus:
    runner: RunnerView
    # Unix seconds; None when never used / never expiring.
    last_used: float | None
    expires: float | None
    queued: int
    worker_tags: Mapping[str, str]


@dataclass(frozen=True)
class WorkerStatus:
    worker: WorkerView
    # Unix seconds.
    last_seen: float
    memory_reserved_bytes: int


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
        # Ollama-style per-request keep-alive, per model (None: never unload); bounded by the
        # models the registry resolves, and dropped when the model leaves every worker.
        self._requested_keep_alive: dict[str, float | None] = {}
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
        self._dispatch_all()

    def heartbeat(
        self,
        worker_id: str,
        runners: Sequence[RunnerReport],
        memory_free_bytes: int,
        *,
        cache_bytes: int = 0,
    ) -> bool:
        known = self.membership.heartbeat(
            worker_id, runners, memory_free_bytes, self._clock.monotonic(), cache_bytes=cache_bytes
        )
        if not known:
            _log.info("heartbeat from unknown worker %s: asking it to register", worker_id)
            return False
        for report in runners:
            if report.state in (RunnerState.FAILED, RunnerState.STOPPED):
                self.policy.forget(worker_id, report.model_id)
        self._dispatch_all()
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
            return await self._assign(
                model,
                affinity_key=affinity_key,
                prefix_hashes=tuple(prefix_hashes),
                priority=priority,
                required_tags=required_tags,
                keep_alive=keep_alive,
                timeout=timeout,
            )

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
            self._requested_keep_alive[model_id] = None if keep_alive < 0 else keep_alive
        tags = self.replicas.required_tags(model_id, required_tags)
        request = RouteRequest(
            model_id=model_id, affinity_key=affinity_key, prefix_hashes=prefix_hashes
        )
        if self.queue.waiting(model_id) == 0:
            assignment = self._route(resolved, request, tags)
            if assignment is not None:
                return assignment
        self.replicas.ensure_replica(resolved, tags)
        waiter = self.queue.enqueue(model_id, request, priority, tags)
        enqueued_at = self._clock.monotonic()
        self._dispatch(model_id)
        wait = self._settings.queue_timeout
        loading = self.loader.busy(model_id)
        if loading:
            wait += self._settings.load_timeout
        if timeout is not None:
            wait = min(wait, timeout - (loop.time() - started))
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            if waiter.future.done() and not waiter.future.exception():
                return waiter.future.result()
            self.queue.discard(waiter)
            if self.loader.busy(model_id):
                raise LoadTimeout(
                    f"{resolved.reference} was not ready within {max(wait, 0.0):.1f}s"
                ) from None
            raise QueueFull(
                f"waited {max(wait, 0.0):.1f}s for a free slot of {resolved.reference}; retry later"
            ) from None
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        finally:
            self.metrics.queue_waited(resolved.reference, self._clock.monotonic() - enqueued_at)

    def release(self, lease_id: str, *, runner_failed: bool = False) -> None:
        lease = self.leases.release(lease_id)
        self.membership.touch(lease.worker_id, lease.model_id, self._clock.monotonic())
        if runner_failed and self.membership.mark_failed(
            lease.worker_id, lease.model_id, lease.generation, "a request saw the runner fail"
        ):
            self.policy.forget(lease.worker_id, lease.model_id)
            _log.warning(
                "runner %s on worker %s failed during a request: no longer routed to",
                lease.model_id,
                lease.worker_id,
            )
        self._dispatch(lease.model_id)
        self.reaper.poke()

    # Configuration ---------------------------------------------------------------------------

    def keep_alive_for(self, model_id: str) -> float | None:
        """Seconds an idle runner of the model stays loaded; None: never unloaded.

        The last request that named a keep-alive (Ollama's `keep_alive`) wins over the model's
        configuration, which wins over MODEL_KEEP_ALIVE.
        """
        if model_id in self._requested_keep_alive:
            return self._requested_keep_alive[model_id]
        entry = self.configs.get(model_id)
        return effective_keep_alive(entry.config if entry else None, self._settings.keep_alive)

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
        now = self._clock.monotonic()
        to_wall = self._clock.wall() - now
        snapshot = self.membership.snapshot(now, self.leases.in_flight())
        statuses = []
        for worker in snapshot.alive_workers():
            for runner in worker.runners:
                keep_alive = self.keep_alive_for(runner.model_id)
                last_used = None if runner.last_used is None else runner.last_used + to_wall
                expires = None if keep_alive is None else runner.idle_since + keep_alive + to_wall
                statuses.append(
                    PlacementStatus(
                        runner=runner,
                        last_used=last_used,
                        expires=expires,
                        queued=self.queue.waiting(runner.model_id),
                        worker_tags=worker.spec.tags,
                    )
                )
        return statuses

    def workers(self) -> list[WorkerStatus]:
        now = self._clock.monotonic()
        to_wall = self._clock.wall() - now
        return [
            WorkerStatus(
                worker=worker,
                last_seen=worker.last_seen + to_wall,
                memory_reserved_bytes=sum(
                    r.report.memory_bytes
                    for r in worker.runners
                    if r.state not in (RunnerState.FAILED, RunnerState.STOPPED)
                ),
            )
            for worker in self.membership.snapshot(now, self.leases.in_flight()).workers
        ]

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
        """Forget dead workers (and their leases), and leases never released."""
        dead = self.membership.expire_dead(now)
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
            self._dispatch_all()
            self.reaper.poke()
        for model_id in list(self._requested_keep_alive):
            if not self.replicas.replicas(model_id) and not self.queue.waiting(model_id):
                del self._requested_keep_alive[model_id]

    async def autoscale_once(self, now: float) -> None:
        await self.replicas.autoscale_once(now)

    async def aclose(self) -> None:
        self.reaper.stop()
        await self.loader.aclose()
        await self._workers.aclose()
        await self._resolver.aclose()

    # Internals: routing and queueing ---------------------------------------------------------

    def _route(
        self, model: ResolvedModel, request: RouteRequest, tags: Mapping[str, str]
    ) -> Assignment | None:
        free = [
            r
            for r in self.replicas.replicas(model.model_id, tags)
            if r.routable and r.in_flight < self.replicas.slots(r)
        ]
        chosen = self.policy.choose(free, request)
        if chosen is None:
            return None
        now = self._clock.monotonic()
        lease = self.leases.create(chosen.worker_id, model.model_id, chosen.report.generation, now)
        self.membership.touch(chosen.worker_id, model.model_id, now, assigned=True)
        self.policy.record(chosen, request)
        return Assignment(
            lease_id=lease.lease_id,
            worker_id=chosen.worker_id,
            worker_address=chosen.worker_address,
            model_id=model.model_id,
            reference=model.reference,
        )

    def _dispatch(self, model_id: str) -> None:
        """Serve the model's waiters, in priority order, while a replica has a free slot."""
        model = self.replicas.models.get(model_id)
        if model is None:
            return
        while (waiter := self.queue.peek(model_id)) is not None:
            if waiter.future.done():
                self.queue.discard(waiter)
                continue
            assignment = self._route(model, waiter.request, waiter.required_tags)
            if assignment is None:
                return
            self.queue.serve(waiter, assignment)

    def _dispatch_all(self) -> None:
        for model_id in self.queue.models():
            self._dispatch(model_id)

    def _abandon(self, waiter: Waiter[Assignment]) -> None:
        """The caller went away while waiting; a lease it was just given goes back."""
        self.queue.discard(waiter)
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            self.release(future.result().lease_id)

    def _load_finished(self, outcome: LoadOutcome) -> None:
        model_id = outcome.model.model_id
        if outcome.error is None:
            self._dispatch(model_id)
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
