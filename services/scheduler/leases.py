"""The lease table: one entry per request the scheduler assigned and the worker has not released.

It is the only owner of leases and of the in-flight count per runner. A lease that is never
released (a worker that crashed mid-request, a lost Release) expires after `lease_timeout`, so
in-flight counts cannot drift upwards forever; the table is bounded by `max_leases`.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from services.scheduler.errors import QueueFull, UnknownLease

__all__ = ["Lease", "LeaseTable"]

RunnerKey = tuple[str, str]


@dataclass(frozen=True)
class Lease:
    lease_id: str
    worker_id: str
    model_id: str
    # The runner's process generation when assigned; a failure report for an older one is stale.
    generation: int
    # Monotonic seconds.
    created: float


class LeaseTable:
    def __init__(self, *, lease_timeout: float, max_leases: int) -> None:
        self._lease_timeout = lease_timeout
        self._max_leases = max_leases
        # Insertion order is creation order, which makes expiry a scan from the front.
        self._leases: dict[str, Lease] = {}
        self._in_flight: Counter[RunnerKey] = Counter()

    def __len__(self) -> int:
        return len(self._leases)

    def create(self, worker_id: str, model_id: str, generation: int, now: float) -> Lease:
        if len(self._leases) >= self._max_leases:
            raise QueueFull(f"too many requests in flight ({self._max_leases}); retry later")
        lease = Lease(
            lease_id=secrets.token_hex(16),
            worker_id=worker_id,
            model_id=model_id,
            generation=generation,
            created=now,
        )
        self._leases[lease.lease_id] = lease
        self._in_flight[(worker_id, model_id)] += 1
        return lease

    def release(self, lease_id: str) -> Lease:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise UnknownLease(
                f"lease {lease_id[:64]!r} is not held (released, expired or unknown)"
            )
        self._forget(lease)
        return lease

    def expire(self, now: float) -> list[Lease]:
        """Drop leases older than the lease timeout; returns them for logging."""
        expired: list[Lease] = []
        for lease in list(self._leases.values()):
            if now - lease.created < self._lease_timeout:
                break
            del self._leases[lease.lease_id]
            self._forget(lease)
            expired.append(lease)
        return expired

    def drop_worker(self, worker_id: str) -> list[Lease]:
        """Forget the leases of a worker that is gone: it will never release them."""
        dropped = [lease for lease in self._leases.values() if lease.worker_id == worker_id]
        for lease in dropped:
            del self._leases[lease.lease_id]
            self._forget(lease)
        return dropped

    def drop_missing(self, worker_id: str, runners: Collection[tuple[str, int]]) -> list[Lease]:
        """Forget the worker's leases on runners, as (model id, generation), that it no longer
        reports: a worker that restarted on the same address lost those requests with its old
        process and will never release them."""
        dropped = [
            lease
            for lease in self._leases.values()
            if lease.worker_id == worker_id and (lease.model_id, lease.generation) not in runners
        ]
        for lease in dropped:
            del self._leases[lease.lease_id]
            self._forget(lease)
        return dropped

    def holds(self, worker_id: str, model_id: str) -> bool:
        """True while a lease on the runner is out."""
        return (worker_id, model_id) in self._in_flight

    def in_flight(self) -> dict[RunnerKey, int]:
        """A copy of the in-flight count per (worker id, model id)."""
        return dict(self._in_flight)

    def in_flight_view(self) -> Mapping[RunnerKey, int]:
        """A read-only live view of the same counts, for the hot path (no copy per Assign)."""
        return MappingProxyType(self._in_flight)

    def _forget(self, lease: Lease) -> None:
        key = (lease.worker_id, lease.model_id)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
