"""When to add or remove a replica: a pure decision over per-model load figures and the time.

Scale up when the requests waiting per replica stay above a threshold for a while (a burst that
drains by itself in a second does not pay for a model load), or when a model has fewer replicas
than its configured minimum. Scale down one replica at a time when the model has more than it
needs (above one and above its minimum), nobody waits, and the replica has been idle long enough.
The keep-alive reaper still unloads whatever is idle past keep-alive, down to the minimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from services.scheduler.snapshot import RunnerView

__all__ = ["ModelLoad", "ScaleDecision", "ScalePolicy"]


@dataclass(frozen=True)
class ModelLoad:
    model_id: str
    waiting: int
    # Routable replicas.
    ready: int
    # Loads in progress.
    starting: int
    # Routable replicas with no request in flight, least recently used first.
    idle: tuple[RunnerView, ...] = ()
    min_replicas: int = 0
    max_replicas: int = 1


@dataclass(frozen=True)
class ScaleDecision:
    # Models that should get one more replica now.
    scale_up: tuple[str, ...] = ()
    # Replicas to unload now.
    scale_down: tuple[RunnerView, ...] = ()


@dataclass
class ScalePolicy:
    # Waiting requests per replica above which the model is under pressure.
    queue_threshold: float
    # How long the pressure must last before a replica is added.
    up_after: float
    # How long an extra replica must be idle before it is removed.
    down_after: float
    # Monotonic time each model came under pressure.
    _pressure_since: dict[str, float] = field(default_factory=dict)

    def decide(self, loads: Sequence[ModelLoad], now: float) -> ScaleDecision:
        up: list[str] = []
        down: list[RunnerView] = []
        seen = set()
        for load in loads:
            seen.add(load.model_id)
            replicas = load.ready + load.starting
            if replicas < load.min_replicas:
                up.append(load.model_id)
                continue
            if self._under_pressure(load, now):
                if replicas < load.max_replicas and load.starting == 0:
                    up.append(load.model_id)
                    # The next replica has to earn its own pressure window.
                    self._pressure_since[load.model_id] = now
                continue
            keep = max(1, load.min_replicas)
            if load.waiting == 0 and load.starting == 0 and load.ready > keep and load.idle:
                oldest = load.idle[0]
                if now - oldest.idle_since >= self.down_after:
                    down.append(oldest)
        for model_id in [m for m in self._pressure_since if m not in seen]:
            del self._pressure_since[model_id]
        return ScaleDecision(scale_up=tuple(up), scale_down=tuple(down))

    def _under_pressure(self, load: ModelLoad, now: float) -> bool:
        replicas = load.ready + load.starting
        if load.ready == 0 or load.waiting / replicas <= self.queue_threshold:
            self._pressure_since.pop(load.model_id, None)
            return False
        since = self._pressure_since.setdefault(load.model_id, now)
        return now - since >= self.up_after
