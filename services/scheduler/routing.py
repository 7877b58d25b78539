"""Which READY replica serves a request: pure policies over snapshot views.

A policy is any callable with the `RoutingPolicy` shape; `least_loaded` is the default. The
request carries the affinity key already, so a session- or prefix-affinity policy can be added as
another function without touching the callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.scheduler.snapshot import RunnerView

__all__ = ["RouteRequest", "RoutingPolicy", "least_loaded"]


@dataclass(frozen=True)
class RouteRequest:
    model_id: str
    affinity_key: str = ""


class RoutingPolicy(Protocol):
    def __call__(
        self, replicas: Sequence[RunnerView], request: RouteRequest
    ) -> RunnerView | None: ...


def least_loaded(replicas: Sequence[RunnerView], request: RouteRequest) -> RunnerView | None:
    """Fewest leases in flight, then least recently assigned (never assigned first), then worker
    id for determinism. Ignores the affinity key."""
    candidates = [r for r in replicas if r.routable and r.model_id == request.model_id]
    if not candidates:
        return None

    def load(runner: RunnerView) -> tuple[int, bool, float, str]:
        assigned = runner.last_assigned
        return (
            runner.in_flight,
            assigned is not None,
            assigned if assigned is not None else 0.0,
            runner.worker_id,
        )

    return min(candidates, key=load)
