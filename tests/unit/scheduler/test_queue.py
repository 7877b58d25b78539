from __future__ import annotations

import pytest

from services.scheduler.errors import LoadFailed, QueueFull
from services.scheduler.queue import RequestQueue
from services.scheduler.routing import RouteRequest

REQUEST = RouteRequest(model_id="m")


async def test_higher_priority_first_then_arrival_order() -> None:
    queue: RequestQueue[str] = RequestQueue(max_waiting=10)
    low = queue.enqueue("m", REQUEST, priority=-1)
    first = queue.enqueue("m", REQUEST, priority=0)
    high = queue.enqueue("m", REQUEST, priority=5)
    second = queue.enqueue("m", REQUEST, priority=0)
    served = []
    while (waiter := queue.peek("m")) is not None:
        queue.serve(waiter, "lease")
        served.append(waiter)
    assert served == [high, first, second, low]
    assert all(w.future.result() == "lease" for w in served)
    assert queue.waiting("m") == 0
    assert queue.models() == []


async def test_bounded_per_model() -> None:
    queue: RequestQueue[str] = RequestQueue(max_waiting=2)
    queue.enqueue("m", REQUEST, 0)
    queue.enqueue("m", REQUEST, 0)
    with pytest.raises(QueueFull):
        queue.enqueue("m", REQUEST, 0)
    # Another model has its own bound.
    queue.enqueue("other", RouteRequest(model_id="other"), 0)
    assert queue.depths() == {"m": 2, "other": 1}


async def test_discarded_waiter_is_skipped_and_not_counted() -> None:
    queue: RequestQueue[str] = RequestQueue(max_waiting=5)
    gone = queue.enqueue("m", REQUEST, 9)
    stays = queue.enqueue("m", REQUEST, 0)
    queue.discard(gone)
    queue.discard(gone)
    assert queue.waiting("m") == 1
    assert queue.peek("m") is stays
    assert not gone.future.done()


async def test_fail_all_reaches_every_waiter_once() -> None:
    queue: RequestQueue[str] = RequestQueue(max_waiting=5)
    waiters = [queue.enqueue("m", REQUEST, 0) for _ in range(3)]
    queue.serve(waiters[0], "lease")
    error = LoadFailed("ai/m", "w1", "boom")
    assert queue.fail_all("m", error) == 2
    assert waiters[0].future.result() == "lease"
    for waiter in waiters[1:]:
        assert waiter.future.exception() is error
    assert queue.waiting("m") == 0


async def test_required_tags_travel_with_the_waiter() -> None:
    queue: RequestQueue[str] = RequestQueue(max_waiting=5)
    waiter = queue.enqueue("m", REQUEST, 0, {"accelerator": "nvidia"})
    assert dict(waiter.required_tags) == {"accelerator": "nvidia"}
