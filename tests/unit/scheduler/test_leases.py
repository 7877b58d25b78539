from __future__ import annotations

import pytest

from services.scheduler.errors import QueueFull, UnknownLease
from services.scheduler.leases import LeaseTable


def table(max_leases: int = 100) -> LeaseTable:
    return LeaseTable(lease_timeout=900.0, max_leases=max_leases)


def test_create_and_release_track_in_flight_per_runner() -> None:
    leases = table()
    a = leases.create("w1", "m", 1, now=0.0)
    b = leases.create("w1", "m", 1, now=0.0)
    leases.create("w2", "m", 1, now=0.0)
    assert a.lease_id != b.lease_id
    assert leases.in_flight() == {("w1", "m"): 2, ("w2", "m"): 1}
    released = leases.release(a.lease_id)
    assert (released.worker_id, released.model_id, released.generation) == ("w1", "m", 1)
    leases.release(b.lease_id)
    assert leases.in_flight() == {("w2", "m"): 1}


def test_double_release_is_unknown() -> None:
    leases = table()
    lease = leases.create("w1", "m", 1, now=0.0)
    leases.release(lease.lease_id)
    with pytest.raises(UnknownLease):
        leases.release(lease.lease_id)
    with pytest.raises(UnknownLease):
        leases.release("never-issued")


def test_old_leases_expire() -> None:
    leases = table()
    old = leases.create("w1", "m", 1, now=0.0)
    young = leases.create("w1", "m", 1, now=500.0)
    assert leases.expire(899.0) == []
    assert leases.expire(900.0) == [old]
    assert leases.in_flight() == {("w1", "m"): 1}
    assert leases.expire(1400.0) == [young]
    assert len(leases) == 0 and leases.in_flight() == {}


def test_table_is_bounded() -> None:
    leases = table(max_leases=2)
    first = leases.create("w1", "m", 1, now=0.0)
    leases.create("w1", "m", 1, now=0.0)
    with pytest.raises(QueueFull):
        leases.create("w1", "m", 1, now=0.0)
    leases.release(first.lease_id)
    leases.create("w1", "m", 1, now=0.0)


def test_dropping_a_worker_forgets_its_leases() -> None:
    leases = table()
    leases.create("w1", "m", 1, now=0.0)
    kept = leases.create("w2", "m", 1, now=0.0)
    assert len(leases.drop_worker("w1")) == 1
    assert leases.in_flight() == {("w2", "m"): 1}
    leases.release(kept.lease_id)


def test_in_flight_is_a_copy() -> None:
    leases = table()
    counts = leases.in_flight()
    leases.create("w1", "m", 1, now=0.0)
    assert counts == {}
