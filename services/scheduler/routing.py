"""Which replica serves a request: policies behind one `RoutingPolicy` protocol.

The caller passes the READY replicas of the model that have a free slot, and tells the policy
which one took the lease (`record`) and which runner is gone (`forget`). Policies do no I/O and
read no clock, so they are deterministic functions of what they were told.

`AffinityRouting` sends a conversation back to the replica whose llama-server prompt cache holds
its prefix: first by session key (`X-Session-ID`, `user`), else by the longest prefix of the
prompt seen before. It yields to load when that replica has more requests than the least busy
one by more than the allowed imbalance: `max_imbalance`, capped at the replica's llama-server
slots minus 2 but at least 1 (0 stays 0: always yield). The cap matters because only replicas
with a free slot are offered, so a target can lead by at most slots - 1: uncapped, a guard of 2
never bites with 3 slots or fewer. The floor keeps a 2-slot replica sticky: there, yielding
whenever the target is busy sent half the turns of the affinity benchmark to the worker without
their history (docs/benchmarks.md). Prefix-only routing collapses under skew (llm-d measured ~55% success
and >140 s TTFT for prefix-only against 100% with a load term; research/peers.md section 3).
The index is a bounded LRU, never a map that grows with traffic (vllm router #687).

Only replicas with a free slot are offered to `choose`; `waits_for_busy` says when a request
would rather wait for a full one (its conversation's replica) than prefill its whole history on a
free one. The dispatcher bounds that wait (SCHEDULER_AFFINITY_WAIT).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.scheduler.snapshot import RunnerView

__all__ = [
    "POLICY_NAMES",
    "AffinityRouting",
    "LeastLoaded",
    "RoundRobin",
    "RouteRequest",
    "RoutingPolicy",
    "make_policy",
]

POLICY_NAMES: tuple[str, ...] = ("affinity", "least-loaded", "round-robin")
# Models whose rotation RoundRobin remembers.
_ROUND_ROBIN_MODELS = 4096


@dataclass(frozen=True)
class RouteRequest:
    model_id: str
    # "session:<id>" or "user:<name>" from the gateway; "" when the request has neither.
    affinity_key: str = ""
    # Hashes of the prompt's growing prefixes, shortest first.
    prefix_hashes: tuple[int, ...] = ()


class RoutingPolicy(Protocol):
    def choose(self, replicas: Sequence[RunnerView], request: RouteRequest) -> RunnerView | None:
        """The replica to serve `request`, or None when `replicas` holds none of its model."""
        ...

    def waits_for_busy(
        self, free: Sequence[RunnerView], busy: Sequence[RunnerView], request: RouteRequest
    ) -> bool:
        """True when `request` would rather wait for a slot on one of `busy` (replicas with no
        free slot) than be served by one of `free` now."""
        ...

    def record(self, chosen: RunnerView, request: RouteRequest) -> None:
        """A lease was taken on `chosen` for `request`."""
        ...

    def forget(self, worker_id: str, model_id: str) -> None:
        """The runner is gone (unloaded, failed, worker dead): its cache is lost."""
        ...


def _candidates(replicas: Sequence[RunnerView], model_id: str) -> list[RunnerView]:
    return [r for r in replicas if r.model_id == model_id and r.routable]


def _load_key(runner: RunnerView) -> tuple[int, bool, float, str]:
    assigned = runner.last_assigned
    return (
        runner.in_flight,
        assigned is not None,
        assigned if assigned is not None else 0.0,
        runner.worker_id,
    )


def _least_loaded(candidates: Sequence[RunnerView]) -> RunnerView | None:
    return min(candidates, key=_load_key) if candidates else None


class LeastLoaded:
    """Fewest leases in flight, then never or least recently assigned, then worker id."""

    def choose(self, replicas: Sequence[RunnerView], request: RouteRequest) -> RunnerView | None:
        return _least_loaded(_candidates(replicas, request.model_id))

    def waits_for_busy(
        self, free: Sequence[RunnerView], busy: Sequence[RunnerView], request: RouteRequest
    ) -> bool:
        return False

    def record(self, chosen: RunnerView, request: RouteRequest) -> None:
        return None

    def forget(self, worker_id: str, model_id: str) -> None:
        return None


class RoundRobin:
    """Each model's requests rotate over its replicas in worker-id order, whatever their load
    (the benchmark's cache-blind baseline). Works when replicas come and go: the next replica
    is the first one after the last chosen worker id."""

    def __init__(self, *, max_models: int = _ROUND_ROBIN_MODELS) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self._max_models = max_models
        self._last: OrderedDict[str, str] = OrderedDict()

    def choose(self, replicas: Sequence[RunnerView], request: RouteRequest) -> RunnerView | None:
        candidates = sorted(_candidates(replicas, request.model_id), key=lambda r: r.worker_id)
        if not candidates:
            return None
        last = self._last.get(request.model_id)
        if last is not None:
            for runner in candidates:
                if runner.worker_id > last:
                    return runner
        return candidates[0]

    def waits_for_busy(
        self, free: Sequence[RunnerView], busy: Sequence[RunnerView], request: RouteRequest
    ) -> bool:
        return False

    def record(self, chosen: RunnerView, request: RouteRequest) -> None:
        self._last[request.model_id] = chosen.worker_id
        self._last.move_to_end(request.model_id)
        while len(self._last) > self._max_models:
            self._last.popitem(last=False)

    def forget(self, worker_id: str, model_id: str) -> None:
        return None


# (model id, session key) or (model id, prefix hash).
_IndexKey = tuple[str, str | int]
# A prefix two different prefixes were seen to follow (see AffinityRouting._followers).
_SHARED = None


class AffinityRouting:
    """Session and prefix affinity, guarded by load; LeastLoaded when there is no target.

    Index values carry the stamp of the `record` that wrote them. `forget` stores a stamp for
    the runner instead of scanning the index (O(1)); entries recorded before it are ignored.
    Since every write stamps and moves its entry to the end, the index is in stamp order, and a
    forget record older than the oldest entry can be dropped: both maps stay bounded.
    """

    def __init__(self, *, max_entries: int, max_imbalance: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_imbalance < 0:
            raise ValueError("max_imbalance must be >= 0")
        self._max_entries = max_entries
        self._max_imbalance = max_imbalance
        self._index: OrderedDict[_IndexKey, tuple[str, int]] = OrderedDict()
        # prefix -> the one prefix seen to follow it, or _SHARED once two different ones did. A
        # shared prefix (a system prompt every conversation opens with) says nothing about where
        # a conversation's cache is: matching it would pile every new conversation onto the
        # worker that served it first.
        self._followers: OrderedDict[_IndexKey, int | None] = OrderedDict()
        self._forgotten: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._stamp = 0

    def __len__(self) -> int:
        return len(self._index)

    def _worker_for(self, key: _IndexKey, model_id: str) -> str | None:
        found = self._index.get(key)
        if found is None:
            return None
        worker_id, stamp = found
        if stamp < self._forgotten.get((worker_id, model_id), -1):
            return None
        return worker_id

    def target(self, candidates: Sequence[RunnerView], request: RouteRequest) -> RunnerView | None:
        """The candidate that served this session, else the longest known prefix; no load
        check."""
        by_worker = {r.worker_id: r for r in candidates}
        model_id = request.model_id
        if request.affinity_key:
            worker_id = self._worker_for((model_id, request.affinity_key), model_id)
            if worker_id in by_worker:
                return by_worker[worker_id]
        for prefix in reversed(request.prefix_hashes):
            if self._followers.get((model_id, prefix), 0) is _SHARED:
                # Shorter prefixes of a shared one are shared too.
                return None
            worker_id = self._worker_for((model_id, prefix), model_id)
            if worker_id in by_worker:
                return by_worker[worker_id]
        return None

    def choose(self, replicas: Sequence[RunnerView], request: RouteRequest) -> RunnerView | None:
        candidates = _candidates(replicas, request.model_id)
        if not candidates:
            return None
        target = self.target(candidates, request)
        if target is not None:
            least = min(r.in_flight for r in candidates)
            if target.in_flight - least <= self.allowed_imbalance(target):
                return target
        return _least_loaded(candidates)

    def waits_for_busy(
        self, free: Sequence[RunnerView], busy: Sequence[RunnerView], request: RouteRequest
    ) -> bool:
        """True when the replica that holds this conversation is among the full ones: its
        prefix is cached there, and a free replica would prefill it all again (seconds for a long
        conversation, where a slot on the full one frees as soon as one of its requests ends).
        The caller bounds the wait (SCHEDULER_AFFINITY_WAIT)."""
        target = self.target(
            [*_candidates(free, request.model_id), *_candidates(busy, request.model_id)], request
        )
        return target is not None and any(r.worker_id == target.worker_id for r in busy)

    def allowed_imbalance(self, target: RunnerView) -> int:
        """How many more requests than the least busy replica the target may have and still be
        chosen: the setting, capped at slots - 2 so that the guard can bite at the replica's slot
        count (slots - 1 is the most a replica with a free slot can lead by), but not below 1
        unless the setting is 0. A replica whose slot count is unknown (0) gets the setting."""
        slots = target.report.parallel
        if slots <= 0 or self._max_imbalance == 0:
            return self._max_imbalance
        return max(1, min(self._max_imbalance, slots - 2))

    def record(self, chosen: RunnerView, request: RouteRequest) -> None:
        self._stamp += 1
        value = (chosen.worker_id, self._stamp)
        model_id = request.model_id
        keys: list[_IndexKey] = [(model_id, prefix) for prefix in request.prefix_hashes]
        if request.affinity_key:
            keys.append((model_id, request.affinity_key))
        index = self._index
        for key in keys:
            index[key] = value
            index.move_to_end(key)
        while len(index) > self._max_entries:
            index.popitem(last=False)
        self._record_followers(model_id, request.prefix_hashes)
        self._prune_forgotten()

    def _record_followers(self, model_id: str, prefixes: Sequence[int]) -> None:
        followers = self._followers
        for prefix, follower in itertools.pairwise(prefixes):
            key = (model_id, prefix)
            seen = followers.get(key, follower)
            followers[key] = follower if seen == follower else _SHARED
            followers.move_to_end(key)
        while len(followers) > self._max_entries:
            followers.popitem(last=False)

    def forget(self, worker_id: str, model_id: str) -> None:
        self._stamp += 1
        key = (worker_id, model_id)
        self._forgotten[key] = self._stamp
        self._forgotten.move_to_end(key)
        self._prune_forgotten()

    def _prune_forgotten(self) -> None:
        forgotten = self._forgotten
        if not forgotten:
            return
        oldest = next(iter(self._index.values()))[1] if self._index else self._stamp + 1
        while forgotten:
            stamp = next(iter(forgotten.values()))
            if stamp > oldest and len(forgotten) <= self._max_entries:
                break
            forgotten.popitem(last=False)


def make_policy(name: str, *, affinity_entries: int, max_imbalance: int) -> RoutingPolicy:
    """The policy called `name` (one of POLICY_NAMES); ValueError otherwise."""
    if name == "affinity":
        return AffinityRouting(max_entries=affinity_entries, max_imbalance=max_imbalance)
    if name == "least-loaded":
        return LeastLoaded()
    if name == "round-robin":
        return RoundRobin()
    raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
