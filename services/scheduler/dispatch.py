"""Who gets a free slot now: routing one request, and serving a model's queue.

Every step here is synchronous, so a lease is taken in the same step of the event loop that saw
the free slot (no lock needed), and a released slot goes to the next waiter in the same step as
the release. Capacity is counted in llama-server slots: a replica takes at most its `parallel`
leases (ReplicaManager.slots); the rest wait in the model's queue in priority order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from services.common.clock import Clock
from services.scheduler.assignment import Assignment
from services.scheduler.errors import LoadTimeout, QueueFull
from services.scheduler.leases import LeaseTable
from services.scheduler.membership import Membership
from services.scheduler.queue import RequestQueue, Waiter
from services.scheduler.replicas import ReplicaManager
from services.scheduler.resolver import ResolvedModel
from services.scheduler.routing import RouteRequest, RoutingPolicy

__all__ = ["Dispatcher"]


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
        self, model: ResolvedModel, request: RouteRequest, tags: Mapping[str, str]
    ) -> Assignment | None:
        """A lease on the replica the policy picks among those with a free slot; None if none."""
        replicas = self._replicas
        # An idle replica always has a free slot: only busy ones need their slot count.
        free = [
            r
            for r in replicas.replicas(model.model_id, tags)
            if r.routable and (r.in_flight == 0 or r.in_flight < replicas.slots(r))
        ]
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

    def dispatch(self, model_id: str) -> None:
        """Serve the model's waiters, in priority order, while a replica has a free slot."""
        model = self._replicas.models.get(model_id)
        if model is None:
            return
        while (waiter := self._queue.peek(model_id)) is not None:
            if waiter.future.done():
                self._queue.discard(waiter)
                continue
            assignment = self.route(model, waiter.request, waiter.required_tags)
            if assignment is None:
                return
            self._queue.serve(waiter, assignment)

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
