"""Which worker should load a model, and which idle runners it must unload first: a pure function
of a cluster snapshot and the model's memory estimate.

A worker's available memory is the smaller of what its capacity leaves after every runner's
reserved memory and what its last reported free memory leaves after loads it has not yet made
(see `available_bytes`); a worker that reports `max_runners` also takes no more runners than
that. Candidates are the alive workers with the required tags, minus the excluded ones. Among
those that can fit the model, possibly after evicting idle runners (least recently used first),
the first difference wins:
1. a worker already starting this model (joining a load beats starting a second one);
2. not a worker where the model just FAILED (a retry after a crash goes elsewhere if it can);
3. fits without eviction;
4. the fewest evictions;
5. the most memory left after placement (unknown capacity counts as the least);
6. the fewest runners;
7. the worker id, so equal workers always give the same answer.
When none can fit now, the refusal says why: no worker (503); every worker that could hold the
model is busy with runners that cannot be evicted yet (`busy`: the request waits for one to go
idle, and a wait that times out is a 503 with Retry-After); or no worker could ever hold it,
even with nothing else loaded (507).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.scheduler.memory import MemoryEstimate, format_bytes
from services.scheduler.snapshot import ClusterSnapshot, RunnerState, RunnerView, WorkerView

__all__ = [
    "PlacementPlan",
    "PlacementRefusal",
    "available_bytes",
    "fits_when_idle",
    "matches_tags",
    "plan_placement",
]

# Runners whose process is gone hold no memory, whatever their last report said.
_GONE = frozenset({RunnerState.STOPPED, RunnerState.FAILED})


@dataclass(frozen=True)
class PlacementPlan:
    worker: WorkerView
    # Idle runners to unload first, least recently used first; () when the model fits.
    evict: tuple[RunnerView, ...] = ()


@dataclass(frozen=True)
class PlacementRefusal:
    # A sentence for the user.
    reason: str
    # True: HTTP 507 (no worker could ever hold the model); False: 503.
    insufficient_memory: bool
    # A worker could hold the model once some of its busy runners go idle: wait, then retry.
    busy: bool = False


def matches_tags(worker: WorkerView, required_tags: Mapping[str, str]) -> bool:
    """True when the worker carries every required tag with the same value."""
    return all(worker.spec.tags.get(key) == value for key, value in required_tags.items())


def _holds_memory(runner: RunnerView) -> bool:
    return runner.state not in _GONE


def _raw_available(worker: WorkerView) -> int | None:
    spec = worker.spec
    if spec.memory_total_bytes <= 0:
        return None
    held = [r for r in worker.runners if _holds_memory(r)]
    by_capacity = spec.memory_total_bytes - sum(r.report.memory_bytes for r in held)
    if spec.memory_free_bytes <= 0:
        return by_capacity
    # The worker's free figure already reflects loaded runners, not loads still in progress.
    not_yet_loaded = sum(r.report.memory_bytes for r in held if r.pending)
    return min(by_capacity, spec.memory_free_bytes - not_yet_loaded)


def available_bytes(worker: WorkerView) -> int | None:
    """Bytes a new runner may use on the worker; None when the worker reports no capacity
    (memory_total_bytes == 0), which placement treats as fitting anything.

    min(total - memory of every runner that holds memory (STARTING placeholders included),
        free - memory of pending runners), floored at 0; only the first term when free is 0.
    """
    raw = _raw_available(worker)
    return None if raw is None else max(0, raw)


@dataclass(frozen=True)
class _Option:
    worker: WorkerView
    evict: tuple[RunnerView, ...]
    # Left after placement; None when the capacity is unknown.
    left: int | None

    def preference(self, model_id: str) -> tuple[bool, bool, int, float, int, str]:
        runner = self.worker.runner(model_id)
        starting = runner is not None and runner.state is RunnerState.STARTING
        failed = runner is not None and runner.state is RunnerState.FAILED
        left = float("-inf") if self.left is None else float(self.left)
        return (
            not starting,
            failed,
            # Fits without eviction, then the fewest evictions.
            len(self.evict),
            -left,
            len(self.worker.runners) - len(self.evict),
            self.worker.worker_id,
        )


def _option(
    worker: WorkerView,
    model_id: str,
    need: int,
    evictable: Callable[[RunnerView], bool],
) -> tuple[_Option | None, int]:
    """The cheapest way to fit the model on `worker` (None when it cannot), and the most memory
    the worker could offer after evicting everything evictable (for the refusal message)."""
    raw = _raw_available(worker)
    joining = worker.runner(model_id)
    starting = joining is not None and joining.state is RunnerState.STARTING
    # Runners beyond the worker's limit, counting the new one; a load in progress already has
    # its place.
    over = 0
    if worker.spec.max_runners > 0 and not starting:
        others = sum(1 for r in worker.runners if r.model_id != model_id and _holds_memory(r))
        over = others + 1 - worker.spec.max_runners
    if raw is None and over <= 0:
        return _Option(worker, (), None), 0
    if raw is not None and starting and joining is not None:
        # The load in progress already reserved this model's memory.
        raw += joining.report.memory_bytes
    if raw is not None and raw >= need and over <= 0:
        return _Option(worker, (), raw - need), raw
    victims = sorted(
        (
            r
            for r in worker.runners
            if r.model_id != model_id and _holds_memory(r) and not r.pending and evictable(r)
        ),
        key=lambda r: (r.idle_since, r.model_id),
    )
    evict: list[RunnerView] = []
    freed = 0
    for victim in victims:
        evict.append(victim)
        freed += victim.report.memory_bytes
        if len(evict) < over:
            continue
        if raw is None:
            return _Option(worker, tuple(evict), None), 0
        if raw + freed >= need:
            return _Option(worker, tuple(evict), raw + freed - need), raw + freed
    return None, (raw or 0) + freed


def fits_when_idle(worker: WorkerView, need: int) -> bool:
    """The model would fit once every runner on the worker is gone: its capacity holds it, and
    its free memory plus what its loaded runners hold covers it (memory taken by something
    else on the machine will not come back by waiting). Unknown capacity: yes."""
    spec = worker.spec
    if spec.memory_total_bytes <= 0:
        return True
    if spec.memory_total_bytes < need:
        return False
    if spec.memory_free_bytes <= 0:
        return True
    loaded = sum(
        r.report.memory_bytes for r in worker.runners if _holds_memory(r) and not r.pending
    )
    return spec.memory_free_bytes + loaded >= need


def _tags_text(required_tags: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(required_tags.items())) + "}"


def _no_worker(
    snapshot: ClusterSnapshot,
    reference: str,
    required_tags: Mapping[str, str],
    exclude_workers: frozenset[str],
) -> PlacementRefusal:
    alive = snapshot.alive_workers()
    if not alive:
        return PlacementRefusal(
            f"no worker available to serve {reference}", insufficient_memory=False
        )
    matching = [w for w in alive if matches_tags(w, required_tags)]
    if not matching:
        return PlacementRefusal(
            f"no alive worker has tags {_tags_text(required_tags)}", insufficient_memory=False
        )
    where = f" with tags {_tags_text(required_tags)}" if required_tags else ""
    if all(worker.spec.draining for worker in matching):
        return PlacementRefusal(
            f"every alive worker{where} is shutting down; none can load {reference}",
            insufficient_memory=False,
        )
    excluded = sum(1 for worker in matching if worker.worker_id in exclude_workers)
    return PlacementRefusal(
        f"{reference} already runs on every alive worker{where} ({excluded})",
        insufficient_memory=False,
    )


def plan_placement(
    snapshot: ClusterSnapshot,
    model_id: str,
    reference: str,
    need: MemoryEstimate,
    *,
    required_tags: Mapping[str, str],
    evictable: Callable[[RunnerView], bool],
    exclude_workers: frozenset[str] = frozenset(),
) -> PlacementPlan | PlacementRefusal:
    """Where to load `model_id` and what to unload first, or why it cannot be loaded.

    `evictable` says which runners may be unloaded to make room (the caller knows which are
    idle and not protected); runners that are loading are never evicted.
    """
    candidates = [
        worker
        for worker in snapshot.alive_workers()
        if worker.worker_id not in exclude_workers
        and not worker.spec.draining
        and matches_tags(worker, required_tags)
    ]
    if not candidates:
        return _no_worker(snapshot, reference, required_tags, exclude_workers)
    required = need.total_bytes
    options: list[_Option] = []
    offers: list[tuple[int, str, WorkerView]] = []
    for worker in candidates:
        option, offer = _option(worker, model_id, required, evictable)
        if option is not None:
            options.append(option)
        else:
            offers.append((max(0, offer), worker.worker_id, worker))
    if options:
        chosen = min(options, key=lambda option: option.preference(model_id))
        return PlacementPlan(worker=chosen.worker, evict=chosen.evict)
    where = f" with tags {_tags_text(required_tags)}" if required_tags else ""
    able = [worker.worker_id for _, _, worker in offers if fits_when_idle(worker, required)]
    if able:
        return PlacementRefusal(
            f"{reference} fits worker(s) {', '.join(sorted(able)[:3])}{where}, but their "
            "memory or runner limit is taken by models in use; waiting for one to go idle",
            insufficient_memory=False,
            busy=True,
        )
    best_offer, _, largest = max(offers, key=lambda offer: offer[:2])
    return PlacementRefusal(
        f"{reference} needs {need.describe()} for {need.parallel} x {need.context_size}-token "
        f"slots; the most any worker{where} can offer is {format_bytes(best_offer)} "
        f"({largest.worker_id}, {format_bytes(largest.spec.memory_total_bytes)} total, after "
        "unloading its idle models); lower its context-size or parallel, or add a larger worker",
        insufficient_memory=True,
    )
