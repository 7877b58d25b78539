"""Assign calls waiting for a model: per model, highest priority first, first come first served
within a priority, bounded.

The control plane decides when a waiter is served (a slot freed, a replica became ready) and
hands it its result through the waiter's future; this module only keeps the order. A waiter that
gives up (deadline, cancelled caller) is removed at once, so counts stay exact.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.scheduler.errors import QueueFull, SchedulerError
from services.scheduler.routing import RouteRequest

__all__ = ["RequestQueue", "Waiter"]

T = TypeVar("T")


@dataclass(eq=False)
class Waiter(Generic[T]):
    model_id: str
    request: RouteRequest
    priority: int
    future: asyncio.Future[T]
    # Worker tags a replica must carry to serve this request.
    required_tags: Mapping[str, str] = field(default_factory=dict)
    # Orders waiters of one priority by arrival.
    sequence: int = 0
    # Clock time until which the waiter would rather wait for the replica that holds its
    # conversation than take a free slot elsewhere (dispatch.py); 0: never.
    patient_until: float = 0.0
    # Removed (served, failed or gave up): skipped when it reaches the top of the heap.
    done: bool = field(default=False)

    def sort_key(self) -> tuple[int, int]:
        return (-self.priority, self.sequence)


def _consume(future: asyncio.Future[T]) -> None:
    # A waiter that timed out may be failed afterwards; nobody reads that error.
    if not future.cancelled():
        future.exception()


class RequestQueue(Generic[T]):
    def __init__(self, *, max_waiting: int) -> None:
        self._max_waiting = max_waiting
        self._heaps: dict[str, list[tuple[tuple[int, int], Waiter[T]]]] = {}
        self._counts: dict[str, int] = {}
        self._sequence = itertools.count()

    def waiting(self, model_id: str) -> int:
        return self._counts.get(model_id, 0)

    def models(self) -> list[str]:
        """Models with at least one waiter."""
        return list(self._counts)

    def depths(self) -> dict[str, int]:
        return dict(self._counts)

    def enqueue(
        self,
        model_id: str,
        request: RouteRequest,
        priority: int,
        required_tags: Mapping[str, str] | None = None,
    ) -> Waiter[T]:
        if self.waiting(model_id) >= self._max_waiting:
            raise QueueFull(
                f"{self._max_waiting} requests are already waiting for {request.model_id}; "
                "retry later"
            )
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        waiter = Waiter(
            model_id=model_id,
            request=request,
            priority=priority,
            future=future,
            required_tags=required_tags or {},
            sequence=next(self._sequence),
        )
        heapq.heappush(self._heaps.setdefault(model_id, []), (waiter.sort_key(), waiter))
        self._counts[model_id] = self._counts.get(model_id, 0) + 1
        return waiter

    def peek(self, model_id: str) -> Waiter[T] | None:
        """The next waiter to serve, or None."""
        heap = self._heaps.get(model_id)
        while heap and heap[0][1].done:
            heapq.heappop(heap)
        if not heap:
            self._heaps.pop(model_id, None)
            return None
        return heap[0][1]

    def serve(self, waiter: Waiter[T], result: T) -> None:
        """Hand the waiter its result and remove it."""
        self._remove(waiter)
        if not waiter.future.done():
            waiter.future.set_result(result)

    def fail(self, waiter: Waiter[T], error: SchedulerError) -> None:
        self._remove(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(error)

    def discard(self, waiter: Waiter[T]) -> None:
        """The caller gave up: forget it."""
        self._remove(waiter)

    def fail_all(self, model_id: str, error: SchedulerError) -> int:
        """Fail every waiter of the model (its load failed and nothing else can serve it)."""
        failed = list(self.pending(model_id))
        for waiter in failed:
            self.fail(waiter, error)
        return len(failed)

    def pending(self, model_id: str) -> Iterator[Waiter[T]]:
        """The model's waiters in the order they are served (a snapshot: serving or discarding
        them while iterating is safe)."""
        for _, waiter in sorted(self._heaps.get(model_id, ())):
            if not waiter.done:
                yield waiter

    def _remove(self, waiter: Waiter[T]) -> None:
        if waiter.done:
            return
        waiter.done = True
        remaining = self._counts.get(waiter.model_id, 0) - 1
        if remaining > 0:
            self._counts[waiter.model_id] = remaining
        else:
            self._counts.pop(waiter.model_id, None)
            self._heaps.pop(waiter.model_id, None)
