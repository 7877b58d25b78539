"""What Assign hands out: a lease on one replica."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Assignment"]


@dataclass(frozen=True)
class Assignment:
    lease_id: str
    worker_id: str
    worker_address: str
    model_id: str
    reference: str
