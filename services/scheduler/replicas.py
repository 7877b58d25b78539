"""Where and how many replicas of each model run.

`ReplicaManager` starts loads where placement says they fit (evicting idle runners first when
needed), keeps each model's configured minimum loaded, adds a replica when a model's queue stays
long and removes extra idle ones (autoscale.py decides when). It reads the queue but never serves
it: the control plane does, when a load it started here finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from services.common.clock import Clock
from services.scheduler.assignment import Assignment
from services.scheduler.autoscale import ModelLoad, ScalePolicy
from services.scheduler.config import SchedulerSettings
from services.scheduler.errors import (
    InsufficientMemory,
    NoWorkerAvailable,
    SchedulerError,
    WorkersBusy,
)
from services.scheduler.leases import LeaseTable
from services.scheduler.loader import Loader
from services.scheduler.membership import Membership
from services.scheduler.memory import MemoryEstimate, estimate_memory, model_context_limit
from services.scheduler.metrics import SchedulerMetrics, UnloadReason
from services.scheduler.model_configs import ConfigStore, ModelRuntimeConfig
from services.scheduler.placement import PlacementRefusal, plan_placement
from services.scheduler.queue import RequestQueue
from services.scheduler.resolver import ModelResolver, ResolvedModel
from services.scheduler.runtime_flags import cache_ram_bytes
from services.scheduler.snapshot import ClusterSnapshot, RunnerState, RunnerView
from services.scheduler.workers import LoadOptions

__all__ = ["ReplicaManager", "is_live"]

_log = logging.getLogger(__name__)


def is_live(runner: RunnerView) -> bool:
    """Serving, or about to: counts as a replica."""
    return runner.routable or runner.pending or runner.state is RunnerState.STARTING


class ReplicaManager:
    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        membership: Membership,
        leases: LeaseTable,
        loader: Loader,
        queue: RequestQueue[Assignment],
        configs: ConfigStore,
        resolver: ModelResolver,
        clock: Clock,
        snapshot: Callable[[], ClusterSnapshot],
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics if metrics is not None else SchedulerMetrics()
        self._membership = membership
        self._leases = leases
        self._loader = loader
        self._queue = queue
        self._configs = configs
        self._resolver = resolver
        self._clock = clock
        self._snapshot = snapshot
        self._scaling = ScalePolicy(
            queue_threshold=settings.scale_up_queue,
            up_after=settings.scale_up_after,
            down_after=settings.scale_down_after,
        )
        # The last resolution of every model with waiters, replicas or a configuration, so that
        # background scaling can load it without asking the registry again. Pruned each pass.
        self.models: dict[str, ResolvedModel] = {}

    # Reading ---------------------------------------------------------------------------------

    def replicas(
        self, model_id: str, required_tags: Mapping[str, str] | None = None
    ) -> list[RunnerView]:
        """The model's runners (every state) on alive workers carrying the required tags."""
        replicas = self._membership.replicas(
            model_id, self._clock.monotonic(), self._leases.in_flight_view()
        )
        if required_tags:
            matching = self._membership.workers_with_tags(required_tags)
            replicas = [r for r in replicas if r.worker_id in matching]
        return replicas

    def slots(self, runner: RunnerView) -> int:
        """Requests the runner's llama-server serves at once."""
        if runner.report.parallel > 0:
            return runner.report.parallel
        entry = self._configs.get(runner.model_id)
        if entry is not None and entry.config.parallel > 0:
            return entry.config.parallel
        return self._settings.default_parallel

    def required_tags(
        self, model_id: str, requested: Mapping[str, str] | None
    ) -> Mapping[str, str]:
        """The model's configured tags, with the request's on top."""
        entry = self._configs.get(model_id)
        configured = entry.config.required_tags if entry else {}
        if not requested:
            return configured
        return {**configured, **requested}

    # Loads -----------------------------------------------------------------------------------

    def ensure_replica(self, model: ResolvedModel, tags: Mapping[str, str]) -> None:
        """Start a load if nothing serves the model or is about to. Raises NoWorkerAvailable or
        InsufficientMemory when no worker can take it, WorkersBusy when one can but not yet."""
        if self._loader.busy(model.model_id):
            return
        if any(is_live(r) for r in self.replicas(model.model_id, tags)):
            return
        self._start_load(model, tags, exclude=frozenset())

    def load_options(self, model: ResolvedModel) -> tuple[LoadOptions, MemoryEstimate]:
        """How the model's next runner is started, and the memory that takes."""
        entry = self._configs.get(model.model_id)
        config = entry.config if entry else ModelRuntimeConfig()
        parallel = config.parallel or self._settings.default_parallel
        context = config.context_size or model.model.config.context_size
        if context <= 0:
            trained = model_context_limit(model.model)
            default = self._settings.default_context_size
            context = min(trained, default) if trained > 0 else default
        args = config.llama_args
        prompt_cache = cache_ram_bytes(args)
        if prompt_cache is None:
            mib = self._settings.default_prompt_cache_mib
            args = ("--cache-ram", str(mib), *args)
            prompt_cache = mib << 20
        estimate = estimate_memory(
            model.model, context_size=context, parallel=parallel, prompt_cache_bytes=prompt_cache
        )
        options = LoadOptions(
            context_size=context,
            parallel=parallel,
            llama_args=args,
            memory_bytes=estimate.total_bytes,
        )
        return options, estimate

    def _start_load(
        self, model: ResolvedModel, tags: Mapping[str, str], *, exclude: frozenset[str]
    ) -> None:
        options, estimate = self.load_options(model)
        plan = plan_placement(
            self._snapshot(),
            model.model_id,
            model.reference,
            estimate,
            required_tags=tags,
            evictable=self.evictable,
            exclude_workers=exclude,
        )
        if isinstance(plan, PlacementRefusal):
            self._metrics.placement_refused(
                insufficient_memory=plan.insufficient_memory, busy=plan.busy
            )
            if plan.busy:
                raise WorkersBusy(plan.reason)
            if plan.insufficient_memory:
                raise InsufficientMemory(plan.reason)
            raise NoWorkerAvailable(plan.reason)
        self._loader.start(model, plan.worker.spec, options, plan.evict)

    def evictable(self, runner: RunnerView) -> bool:
        """An idle runner that may make room: not serving, not loading, nobody waiting for its
        model, and not one of the replicas its configured minimum keeps."""
        if runner.busy or runner.pending or runner.state is RunnerState.STARTING:
            return False
        if self._loader.busy(runner.model_id) or self._queue.waiting(runner.model_id):
            return False
        return runner.state is not RunnerState.READY or not self._at_minimum(runner.model_id)

    def protected_from_idle_unload(self, runner: RunnerView) -> bool:
        """The reaper keeps a model's configured minimum and any model with waiters."""
        if self._queue.waiting(runner.model_id) or self._loader.busy(runner.model_id):
            return True
        return self._at_minimum(runner.model_id)

    def _at_minimum(self, model_id: str) -> bool:
        """Unloading one more ready replica would go below the model's configured minimum."""
        entry = self._configs.get(model_id)
        minimum = entry.config.min_replicas if entry else 0
        if minimum == 0:
            return False
        return sum(1 for r in self.replicas(model_id) if r.routable) <= minimum

    # Scaling ---------------------------------------------------------------------------------

    async def autoscale_once(self, now: float) -> None:
        """Re-place models whose waiters lost every replica, add replicas under pressure or
        below the configured minimum, and remove extra idle ones."""
        for model_id in self._queue.models():
            resolved = self.models.get(model_id)
            if resolved is None or any(is_live(r) for r in self.replicas(model_id)):
                continue
            try:
                self.ensure_replica(resolved, self.required_tags(model_id, None))
            except WorkersBusy:
                continue  # the waiters keep waiting: the next pass tries again
            except SchedulerError as exc:
                failed = self._queue.fail_all(model_id, exc)
                _log.warning("%d request(s) for %s failed: %s", failed, model_id, exc)
        await self._resolve_configured_minimums()
        tracked = self._tracked_models()
        decision = self._scaling.decide([self._model_load(m) for m in tracked], now)
        for model_id in decision.scale_up:
            self._scale_up(model_id)
        if decision.scale_down:
            for runner in decision.scale_down:
                _log.info(
                    "scaling %s down: replica on worker %s idle", runner.model_id, runner.worker_id
                )
            await self._loader.unload(decision.scale_down, reason=UnloadReason.SCALE_DOWN)
        for model_id in [m for m in self.models if m not in tracked]:
            del self.models[model_id]

    def _tracked_models(self) -> set[str]:
        tracked = set(self._queue.models())
        tracked.update(r.model_id for r in self._snapshot().runners())
        tracked.update(entry.model_id for entry in self._configs.entries())
        return tracked

    def _max_replicas(self, model_id: str) -> int:
        entry = self._configs.get(model_id)
        if entry is not None and entry.config.max_replicas > 0:
            return entry.config.max_replicas
        return self._settings.default_max_replicas

    def _model_load(self, model_id: str) -> ModelLoad:
        ready = [r for r in self.replicas(model_id) if r.routable]
        idle = sorted((r for r in ready if not r.busy), key=lambda r: r.idle_since)
        entry = self._configs.get(model_id)
        minimum = entry.config.min_replicas if entry else 0
        return ModelLoad(
            model_id=model_id,
            waiting=self._queue.waiting(model_id),
            ready=len(ready),
            starting=self._loader.loading(model_id),
            idle=tuple(idle),
            min_replicas=minimum,
            max_replicas=max(self._max_replicas(model_id), minimum),
        )

    def _scale_up(self, model_id: str) -> None:
        model = self.models.get(model_id)
        if model is None:
            return
        # Only live replicas occupy a worker: a FAILED runner (its llama-server crashed) is
        # replaced by the next Load there, so its worker must stay a candidate.
        have = frozenset(r.worker_id for r in self.replicas(model_id) if is_live(r))
        try:
            self._start_load(model, self.required_tags(model_id, None), exclude=have)
        except SchedulerError as exc:
            _log.info("no room for another replica of %s: %s", model.reference, exc)
            return
        _log.info("scaling %s up to %d replica(s)", model.reference, len(have) + 1)

    async def _resolve_configured_minimums(self) -> None:
        """Configured models with a minimum that nobody asked for yet still need their model."""
        for entry in self._configs.entries():
            if entry.config.min_replicas <= 0 or entry.model_id in self.models:
                continue
            try:
                self.models[entry.model_id] = await self._resolver.resolve(
                    entry.model_id, timeout=self._settings.rpc_timeout
                )
            except SchedulerError as exc:
                _log.warning("configured model %s cannot be resolved: %s", entry.reference, exc)
