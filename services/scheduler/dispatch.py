"""Who gets a free slot now: routing one request, and serving a model's queue.

Every step here is synchronous, so a lease is taken in the same step of the event loop that saw
the free slot (no lock needed), and a released slot goes to the next waiter in the same step as
the release. Capacity is counted in llama-server slots: a replica takes at most its `parallel`
leases (ReplicaManager.slots); the rest wait in the model's queue in priority order.

A waiter may be *patient* for a while (Waiter.patient_until, SCHEDULER_AFFINITY_WAIT): while its
conversation's replica is full, it leaves a free slot elsewhere to the waiters behind it rather
than prefill its whole history on a replica that holds none of it (RoutingPolicy.waits_for_busy).
Once its patience runs out it takes any free slot, in its turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from services.common.clock import Clock
from services.scheduler.assignment import Assignment
from services.scheduler.errors import LoadTimeout, QueueFull
from services.scheduler.leases import LeaseTable
from services.scheduler.membership import Membership
from services.scheduler.queue import RequestQueue, Waiter
from services.scheduler.replicas import ReplicaManager
from services.scheduler.resolver import ResolvedModel
from services.scheduler.routing import RouteRequest, RoutingPolicy
from services.scheduler.snapshot import RunnerView

__all__ = ["Dispatcher"]

# Patient waiters a dispatch looks past to serve those behind them: bounds the work of one
# release when many wait for their replica.
_MAX_PATIENT_SKIPS = 32


class Dispatcher:
    def __init__(
        self,
        *,
        membership: Membership,
        leases: LeaseTable,
        queue: RequestQueue[Assignment],
        replicas: ReplicaManager,
        policy: RoutingPolicy,
        clock: Clock,
    ) -> None:
        self._membership = membership
        self._leases = leases
        self._queue = queue
        self._replicas = replicas
        self._policy = policy
        self._clock = clock

    def route(
        self,
        model: ResolvedModel,
        request: RouteRequest,
        tags: Mapping[str, str],
        *,
        patient: bool = False,
    ) -> Assignment | None:
        """A lease on the replica the policy picks among those with a free slot; None if none,
        or, when `patient`, if the policy would rather wait for a full replica."""
        free, busy = self._free_and_busy(model.model_id, tags)
        if patient and self._waits(free, busy, request):
            return None
        return self._lease(model, request, free)

    def _free_and_busy(
        self, model_id: str, tags: Mapping[str, str]
    ) -> tuple[list[RunnerView], list[RunnerView]]:
        """The model's routable replicas: those with a free slot, and the full ones."""
        replicas = self._replicas
        free: list[RunnerView] = []
        busy: list[RunnerView] = []
        for runner in replicas.replicas(model_id, tags):
            if not runner.routable:
                continue
            # An idle replica always has a free slot: only busy ones need their slot count.
            if runner.in_flight == 0 or runner.in_flight < replicas.slots(runner):
                free.append(runner)
            else:
                busy.append(runner)
        return free, busy

    def _waits(
        self, free: Sequence[RunnerView], busy: Sequence[RunnerView], request: RouteRequest
    ) -> bool:
        return bool(free and busy) and self._policy.waits_for_busy(free, busy, request)

    def _lease(
        self, model: ResolvedModel, request: RouteRequest, free: Sequence[RunnerView]
    ) -> Assignment | None:
        chosen = self._policy.choose(free, request)
        if chosen is None:
            return None
        now = self._clock.monotonic()
        lease = self._leases.create(chosen.worker_id, model.model_id, chosen.report.generation, now)
        self._membership.touch(chosen.worker_id, model.model_id, now, assigned=True)
        self._policy.record(chosen, request)
        return Assignment(
            lease_id=lease.lease_id,
            worker_id=chosen.worker_id,
            worker_address=chosen.worker_address,
            model_id=model.model_id,
            reference=model.reference,
        )

    def enqueue(
        self,
        model_id: str,
        request: RouteRequest,
        priority: int,
        tags: Mapping[str, str],
        *,
        patience: float,
    ) -> Waiter[Assignment]:
        """Queue a request that found no slot it wanted (QueueFull when the queue is full) and
        serve the queue. For `patience` seconds it may wait for its conversation's replica."""
        waiter = self._queue.enqueue(model_id, request, priority, tags)
        if patience > 0:
            waiter.patient_until = self._clock.monotonic() + patience
            # When its patience ends, a free slot elsewhere is its to take even if no release
            # comes to dispatch the queue.
            asyncio.get_running_loop().call_later(patience, self.dispatch, model_id)
        self.dispatch(model_id)
        return waiter

    def dispatch(self, model_id: str) -> None:
        """Serve the model's waiters, in priority order, while a replica has a free slot."""
        model = self._replicas.models.get(model_id)
        if model is None:
            return
        queue = self._queue
        while (waiter := queue.peek(model_id)) is not None:
            served = self._serve(model, waiter)
            if served is None:
                # The first waiter waits for its replica: the free slots go to those behind it.
                self._serve_behind_patient(model)
                return
            if not served:
                return

    def _serve_behind_patient(self, model: ResolvedModel) -> None:
        skipped = 0
        for waiter in self._queue.pending(model.model_id):
            served = self._serve(model, waiter)
            if served is None:
                skipped += 1
                if skipped > _MAX_PATIENT_SKIPS:
                    return
            elif not served:
                return

    def _serve(self, model: ResolvedModel, waiter: Waiter[Assignment]) -> bool | None:
        """Route one waiter: True if served (or gone), False if no free slot suits it, None if
        it patiently waits for its conversation's full replica while another has a free slot."""
        if waiter.future.done():
            self._queue.discard(waiter)
            return True
        free, busy = self._free_and_busy(model.model_id, waiter.required_tags)
        if not free:
            return False
        if waiter.patient_until > self._clock.monotonic() and self._waits(
            free, busy, waiter.request
        ):
            return None
        assignment = self._lease(model, waiter.request, free)
        if assignment is None:
            return False
        self._queue.serve(waiter, assignment)
        return True

    def dispatch_all(self) -> None:
        for model_id in self._queue.models():
            self.dispatch(model_id)

    async def wait(
        self,
        waiter: Waiter[Assignment],
        model: ResolvedModel,
        seconds: float,
        *,
        loading: Callable[[str], bool],
        give_back: Callable[[str], None],
    ) -> Assignment:
        """The assignment `waiter` is served within `seconds`. Raises LoadTimeout while the
        model is still loading, else QueueFull; a caller that goes away leaves the queue, and
        a lease it was just given goes back through `give_back`."""
        try:
            async with asyncio.timeout(seconds):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            if waiter.future.done() and not waiter.future.exception():
                return waiter.future.result()
            self._queue.discard(waiter)
            if loading(model.model_id):
                raise LoadTimeout(
                    f"{model.reference} was not ready within {seconds:.1f}s"
                ) from None
            raise QueueFull(
                f"waited {seconds:.1f}s for a free slot of {model.reference}; retry later"
            ) from None
        except asyncio.CancelledError:
            self._queue.discard(waiter)
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                give_back(future.result().lease_id)
            raise
