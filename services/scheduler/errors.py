"""Scheduler errors. `server.py` maps each branch of this tree to one gRPC status.

SchedulerError
├── InvalidRequest             INVALID_ARGUMENT   a malformed call (empty worker id, ...)
│   └── InvalidModelReference  INVALID_ARGUMENT   the model string is not a reference
├── ModelNotFound              NOT_FOUND          the registry does not have the model
├── UnknownLease               NOT_FOUND          released twice, expired, or from before a restart
├── ModelBusy                  FAILED_PRECONDITION  reconfiguring a model while it serves requests
├── InsufficientMemory         RESOURCE_EXHAUSTED  no worker could hold the model, even with
│                                                  nothing else loaded ("insufficient-memory": 507)
├── Unavailable                UNAVAILABLE        nothing can serve the request right now
│   ├── NoWorkerAvailable      no alive worker matches
│   ├── WorkersBusy            the workers that could hold the model are busy; Assign waits
│   │                          in the queue instead of raising it (a timeout is QueueFull)
│   ├── LoadFailed             the worker could not start the model (carries its reason)
│   ├── RegistryUnavailable    the registry did not answer
│   └── ShuttingDown           the scheduler is stopping
├── LoadTimeout                DEADLINE_EXCEEDED  the load outlived its deadline
└── QueueFull                  RESOURCE_EXHAUSTED the model's queue is full, a wait for a slot timed
                                                  out, or too many leases (reason "queue-full")
"""

from __future__ import annotations

__all__ = [
    "InsufficientMemory",
    "InvalidModelReference",
    "InvalidRequest",
    "LoadFailed",
    "LoadTimeout",
    "ModelBusy",
    "ModelNotFound",
    "NoWorkerAvailable",
    "QueueFull",
    "RegistryUnavailable",
    "SchedulerError",
    "ShuttingDown",
    "Unavailable",
    "UnknownLease",
    "WorkersBusy",
]


class SchedulerError(Exception):
    """Base of every error the scheduler reports to its callers."""


class InvalidRequest(SchedulerError):
    """The request is malformed."""


class InvalidModelReference(InvalidRequest):
    """The model string cannot be parsed as a reference or id."""


class ModelNotFound(SchedulerError):
    """The registry has no model under this reference."""


class UnknownLease(SchedulerError):
    """The lease id is not in the table (already released, expired, or issued before a restart)."""


class ModelBusy(SchedulerError):
    """The model's configuration cannot change while one of its runners serves requests."""


class InsufficientMemory(SchedulerError):
    """No worker that may run the model has the memory for it, even after evicting idle models."""


class Unavailable(SchedulerError):
    """Nothing can serve the request right now; a retry later may succeed."""


class NoWorkerAvailable(Unavailable):
    """No alive worker can take the model."""


class WorkersBusy(Unavailable):
    """Workers that could hold the model are full of runners that serve requests; one of them
    will make room when it goes idle."""


class LoadFailed(Unavailable):
    """A worker failed to load the model; `reason` is what the worker (llama-server) said."""

    def __init__(self, model: str, worker_id: str, reason: str) -> None:
        super().__init__(f"failed to load {model} on worker {worker_id}: {reason}")
        self.model = model
        self.worker_id = worker_id
        self.reason = reason


class RegistryUnavailable(Unavailable):
    """The registry could not be asked to resolve the model."""


class ShuttingDown(Unavailable):
    """The scheduler is stopping and takes no new loads."""


class LoadTimeout(SchedulerError):
    """The model did not become ready before the load or caller deadline."""


class QueueFull(SchedulerError):
    """A bound was hit: the model's queue, its wait deadline, or the leases in flight."""
