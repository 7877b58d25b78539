"""Placement under a skewed workload: many models, mixed worker sizes, short keep-alive.

A real registry process holds 40 models: the SmolLM2 GGUF packaged 40 times with different
context sizes (2,048 to 16,384 tokens per slot, plus two at 32,768 that no worker can hold), so
the scheduler's memory estimates (weights + KV cache for 4 slots + overhead, from the GGUF
metadata) range from ~0.5 to ~3.2 GiB. A real scheduler process places them on 24 simulated
workers (`SimulatedFleet`, in this process: real Worker gRPC servers with the simulated engine,
so a load takes `--load-time` seconds and no llama-server runs).

Requests arrive open-loop (Poisson, `--rate` per second); each picks a model from a Zipf
distribution (exponent `--zipf`) over a seeded shuffle of the 40, so popularity and size are
independent; calls Scheduler.Assign (as the gateway does, 30 s deadline), holds the lease for an
exponential service time (mean `--hold` seconds), then calls Release (as the worker does). After
a warm-up, one window of `--duration` seconds is measured:

- served warm: a READY replica of the model existed on some worker when the request arrived (read
  from the simulated workers' own runner pools), so it did not wait for a load;
- loads, evictions (runners unloaded to make room for a load), idle unloads (keep-alive) and
  scale-ups, counted from the scheduler's own log lines in the window, and extrapolated per hour;
- refused requests by the status the gateway would answer: 507 (RESOURCE_EXHAUSTED with
  x-modelrunner-reason=insufficient-memory), 503 (queue full, UNAVAILABLE), 504 (deadline);
- Assign wait p50/p95, for all successful requests and for the cold ones.

Three scenarios, each with a fresh scheduler and fleet, compare what placement can be given (the
scheduler has no naive placement mode to switch to; SCHEDULER_ROUTING only picks among
replicas): mixed worker sizes with a short keep-alive; the same sizes with a long keep-alive;
and the same total memory as identical workers with the short keep-alive.

    .venv/bin/python bench/placement_skew.py --store .cache/bench-skew-store            # ~3.5 min
    .venv/bin/python bench/placement_skew.py --store .cache/bench-skew-store --quick    # ~1.3 min

Without `--store` (or on its first use) packaging the 40 models adds 1.5-3 minutes on the 2-core
machine (the registry parses the GGUF each time); `--store DIR` keeps them for later runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.cluster import (  # noqa: E402
    DEFAULT_GGUF,
    ProcessGroup,
    markdown_table,
    package,
    percentile,
    progress,
)
from modelrunner.v1 import (  # noqa: E402
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.common.grpc_client import open_channel  # noqa: E402
from services.scheduler.memory import estimate_memory, format_bytes  # noqa: E402
from services.worker.config import WorkerSettings  # noqa: E402
from services.worker.fleet import SimulatedFleet, SimulatedWorkerSpec  # noqa: E402
from services.worker.runner import RunnerState  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
SLOTS = 4
PROMPT_CACHE_MIB = 64
# Contexts per slot of the 40 models (plus the model's rank, which makes each a model of its own):
# 38 that fit somewhere, 2 that fit nowhere.
CONTEXTS = (2048,) * 10 + (4096,) * 10 + (8192,) * 10 + (16384,) * 8 + (32768,) * 2
_ASSIGN_TIMEOUT = 30.0
_RPC_TIMEOUT = 10.0
_MAX_OUTSTANDING = 2000
_REASON_KEY = "x-modelrunner-reason"
_LOADING = re.compile(r"loading (\S+) on worker (\S+) .*?(?: after evicting (.+))?$")
_IDLE = re.compile(r"unloading (\S+) from worker (\S+): idle")
_SCALE_UP = re.compile(r"scaling (\S+) up to")
_LOAD_FAILED = re.compile(r"WARNING scheduler services\.scheduler\.loader")


@dataclass(frozen=True)
class Scenario:
    name: str
    # (count, memory bytes) per worker class.
    workers: tuple[tuple[int, int], ...]
    keep_alive: str


def scenarios() -> list[Scenario]:
    # Small workers hold only the 2,048-token models, medium ones up to 8,192, and only the
    # large ones a 16,384-token model; together they hold ~80% of the 38 placeable models.
    mixed = ((8, 512 * MIB), (8, 1 * GIB), (8, 2 * GIB))
    total = sum(count * size for count, size in mixed)
    uniform = ((24, total // 24),)
    return [
        Scenario("mixed 512 MiB / 1 GiB / 2 GiB, keep-alive 30s", mixed, "30s"),
        Scenario("mixed 512 MiB / 1 GiB / 2 GiB, keep-alive 10m", mixed, "10m"),
        Scenario(
            f"uniform {format_bytes(total // 24)} (same total), keep-alive 30s", uniform, "30s"
        ),
    ]


@dataclass(frozen=True)
class Model:
    tag: str
    model_id: str
    context: int
    estimate: int


@dataclass
class Request:
    started: float
    model: Model
    warm: bool
    wait: float = 0.0
    # "ok", "507", "503", "504" or "error: ...".
    outcome: str = "ok"
    detail: str = ""


@dataclass
class ScenarioResult:
    scenario: Scenario
    duration: float
    largest_worker: int
    requests: list[Request] = field(default_factory=list)
    loads: int = 0
    evictions: int = 0
    idle_unloads: int = 0
    scale_ups: int = 0
    load_failures: int = 0
    # Loads placed on a worker larger than the smallest worker size the model fits.
    roomier_than_needed: int = 0
    # Runners evicted from the largest workers.
    evicted_from_largest: int = 0
    log_sample: list[str] = field(default_factory=list)


def _outcome(error: grpc.aio.AioRpcError) -> str:
    code = error.code()
    reason = dict(error.trailing_metadata() or ()).get(_REASON_KEY, "")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "507" if reason == "insufficient-memory" else "503"
    if code is grpc.StatusCode.UNAVAILABLE:
        return "503"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "504"
    return f"error: {code.name} {error.details()}"


def _warm(fleet: SimulatedFleet, model_id: str) -> bool:
    """A READY runner of the model exists on some worker (the workers' own view)."""
    for worker_id in fleet.worker_ids:
        for runner in fleet.node(worker_id).pool.snapshot():
            if runner.model_id == model_id and runner.state is RunnerState.READY:
                return True
    return False


async def drive(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    fleet: SimulatedFleet,
    models: Sequence[Model],
    args: argparse.Namespace,
    seconds: float,
    rng: random.Random,
) -> list[Request]:
    """Open-loop Poisson arrivals for `seconds`; returns once every request has finished."""
    weights = [1 / (rank + 1) ** args.zipf for rank in range(len(models))]
    requests: list[Request] = []
    outstanding = asyncio.Semaphore(_MAX_OUTSTANDING)

    async def one(model: Model, hold: float) -> None:
        request = Request(time.monotonic(), model, _warm(fleet, model.model_id))
        requests.append(request)
        try:
            reply = await stub.Assign(
                scheduler_pb2.AssignRequest(
                    model=model.tag, endpoint=common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
                ),
                timeout=_ASSIGN_TIMEOUT,
            )
            request.wait = time.monotonic() - request.started
            await asyncio.sleep(hold)
            await stub.Release(
                scheduler_pb2.ReleaseRequest(lease_id=reply.lease_id), timeout=_RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            request.wait = time.monotonic() - request.started
            request.outcome = _outcome(exc)
            request.detail = exc.details() or ""
        finally:
            outstanding.release()

    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    next_at = loop.time()
    async with asyncio.TaskGroup() as group:
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await outstanding.acquire()
            model = rng.choices(models, weights)[0]
            group.create_task(one(model, rng.expovariate(1 / args.hold)))
            next_at += rng.expovariate(args.rate)
    return requests


def count_log(
    result: ScenarioResult, text: str, models: Sequence[Model], memory: dict[str, int]
) -> None:
    """Count the scheduler's load, eviction, idle-unload and scale-up lines in `text`."""
    estimates = {f"{m.tag}:latest": m.estimate for m in models}
    sizes = sorted({size for _, size in result.scenario.workers})
    for line in text.splitlines():
        if (match := _LOADING.search(line)) is not None:
            result.loads += 1
            reference, worker_id, evicted = match.groups()
            worker_memory = memory.get(worker_id, 0)
            smallest_fit = next((size for size in sizes if size >= estimates[reference]), 0)
            result.roomier_than_needed += smallest_fit < worker_memory
            if evicted:
                count = len(evicted.split(", "))
                result.evictions += count
                if worker_memory == sizes[-1]:
                    result.evicted_from_largest += count
        elif _IDLE.search(line):
            result.idle_unloads += 1
        elif _SCALE_UP.search(line):
            result.scale_ups += 1
        if _LOAD_FAILED.search(line):
            result.load_failures += 1
            if len(result.log_sample) < 3:
                result.log_sample.append(line[:300])


async def run_scenario(
    group: ProcessGroup,
    registry: str,
    models: Sequence[Model],
    scenario: Scenario,
    args: argparse.Namespace,
) -> ScenarioResult:
    scheduler, address = await group.start_scheduler(
        "scheduler-" + re.sub(r"\W+", "-", scenario.name),
        registry,
        {
            "LOG_LEVEL": "INFO",
            "MODEL_KEEP_ALIVE": scenario.keep_alive,
            "SCHEDULER_DEFAULT_PARALLEL": str(SLOTS),
            "SCHEDULER_PROMPT_CACHE_MIB": str(PROMPT_CACHE_MIB),
            "SCHEDULER_MAX_REPLICAS": str(args.max_replicas),
            "SCHEDULER_HEARTBEAT_INTERVAL": "1s",
        },
    )
    specs = []
    for size_index, (count, memory) in enumerate(scenario.workers):
        for index in range(count):
            specs.append(
                SimulatedWorkerSpec(
                    worker_id=f"sim-{size_index}-{index:02d}",
                    memory_bytes=memory,
                    load_time=args.load_time,
                )
            )
    settings = WorkerSettings(max_runners=args.max_runners)
    result = ScenarioResult(scenario, args.duration, max(size for _, size in scenario.workers))
    rng = random.Random(args.seed)
    try:
        async with (
            SimulatedFleet(
                specs,
                scheduler_address=address,
                registry_address=registry,
                heartbeat_interval=1.0,
                settings=settings,
            ) as fleet,
            open_channel(address) as channel,
        ):
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            log = scheduler.log_path
            progress(f"{scenario.name}: {args.warmup:g} s warm-up, {args.duration:g} s measured")
            # One uninterrupted arrival stream; the window starts when the warm-up ends.
            marks: list[tuple[float, int]] = []
            window = asyncio.get_running_loop().call_later(
                args.warmup, lambda: marks.append((time.monotonic(), log.stat().st_size))
            )
            requests = await drive(stub, fleet, models, args, args.warmup + args.duration, rng)
            window.cancel()
            start, offset = marks[0]
            result.requests = [q for q in requests if q.started >= start]
            with log.open("rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
            count_log(result, text, models, {spec.worker_id: spec.memory_bytes for spec in specs})
    finally:
        await group.stop(scheduler)
    return result


async def package_models(
    registry: str, gguf: Path, seed: int
) -> tuple[list[Model], dict[str, common_pb2.Model]]:
    """The 40 models in Zipf rank order (a seeded shuffle of the contexts)."""
    contexts = list(CONTEXTS)
    random.Random(seed).shuffle(contexts)
    semaphore = asyncio.Semaphore(2)

    async def one(rank: int, base: int) -> tuple[Model, common_pb2.Model]:
        # The context size is in the model's config blob: equal contexts would be one model.
        context = base + rank
        tag = f"bench/skew-{rank:02d}"
        async with semaphore:
            model = await _packaged(stub, tag, context)
            if model is None:
                model = await package(registry, gguf, tag, context_size=context)
        estimate = estimate_memory(
            model, context_size=context, parallel=SLOTS, prompt_cache_bytes=PROMPT_CACHE_MIB * MIB
        )
        return Model(tag, model.id, context, estimate.total_bytes), model

    async with open_channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        pairs = await asyncio.gather(*(one(rank, c) for rank, c in enumerate(contexts)))
    return [model for model, _ in pairs], {model.model_id: raw for model, raw in pairs}


async def _packaged(
    stub: registry_pb2_grpc.RegistryAsyncStub, tag: str, context: int
) -> common_pb2.Model | None:
    """The model already in the store (a reused --store) under `tag` with this context."""
    try:
        model = await stub.InspectModel(
            registry_pb2.InspectModelRequest(reference=f"{tag}:latest"), timeout=_RPC_TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return model if model.config.context_size == context else None


def _per_hour(count: int, seconds: float) -> str:
    return f"{count} ({count / seconds * 3600:,.0f}/h)"


def _placeable_507(result: ScenarioResult) -> list[Request]:
    """507 answers for models that fit an empty worker of this fleet."""
    return [
        q
        for q in result.requests
        if q.outcome == "507" and q.model.estimate <= result.largest_worker
    ]


def result_table(results: Sequence[ScenarioResult]) -> str:
    rows = []
    for r in results:
        total = len(r.requests)
        ok = [q for q in r.requests if q.outcome == "ok"]
        warm = sum(1 for q in r.requests if q.warm)
        cold_ok = [q.wait for q in ok if not q.warm]
        outcomes = Counter(q.outcome for q in r.requests)
        other = sum(n for name, n in outcomes.items() if name.startswith("error"))
        placeable = len(_placeable_507(r))
        rows.append(
            [
                r.scenario.name,
                str(total),
                f"{warm / max(1, total) * 100:.1f}%",
                _per_hour(r.loads, r.duration),
                _per_hour(r.evictions, r.duration),
                _per_hour(r.idle_unloads, r.duration),
                str(r.scale_ups),
                str(r.load_failures),
                f"{outcomes['507']} ({placeable}) / {outcomes['503']} / {outcomes['504']} / {other}",
                f"{percentile([q.wait for q in ok], 0.5) * 1000:.1f} / "
                f"{percentile([q.wait for q in ok], 0.95) * 1000:.0f}",
                f"{percentile(cold_ok, 0.5) * 1000:.0f}" if cold_ok else "-",
            ]
        )
    return markdown_table(
        [
            "scenario",
            "requests",
            "served warm",
            "loads",
            "evictions",
            "idle unloads",
            "scale-ups",
            "failed loads",
            "refused 507 (of which placeable) / 503 / 504 / other",
            "Assign wait p50 / p95 (ms)",
            "cold wait p50 (ms)",
        ],
        rows,
    )


def model_line(models: Sequence[Model], zipf: float) -> str:
    weights = [1 / (rank + 1) ** zipf for rank in range(len(models))]
    total = sum(weights)
    by_context: dict[int, list[int]] = {}
    for rank, model in enumerate(models):
        by_context.setdefault(model.context - rank, []).append(rank)
    parts = []
    for context, ranks in sorted(by_context.items()):
        estimate = max(models[rank].estimate for rank in ranks)
        share = sum(weights[r] for r in ranks) / total * 100
        parts.append(
            f"{len(ranks)} x {context}(+rank) tokens/slot = {format_bytes(estimate)} "
            f"(ranks {', '.join(str(r + 1) for r in ranks[:4])}{', ...' if len(ranks) > 4 else ''}"
            f"; {share:.0f}% of requests)"
        )
    return "; ".join(parts)


def summary(results: Sequence[ScenarioResult]) -> str:
    parts = []
    for r in results:
        total = max(1, len(r.requests))
        warm = sum(1 for q in r.requests if q.warm) / total * 100
        refused_507 = sum(1 for q in r.requests if q.outcome == "507") / total * 100
        parts.append(
            f"{r.scenario.name}: {warm:.1f}% served warm, {r.evictions} evictions "
            f"({r.evicted_from_largest} from the largest workers) and {r.idle_unloads} idle "
            f"unloads in {r.duration:g} s, {refused_507:.1f}% refused 507, and "
            f"{r.roomier_than_needed} of {r.loads} loads went to a worker larger than the "
            "smallest size the model fits"
        )
    failures = [r for r in results if r.load_failures]
    text = "; ".join(parts) + "."
    placeable = [q for r in results for q in _placeable_507(r)]
    if placeable:
        text += (
            f" {len(placeable)} of the 507 answers were for models that fit an empty worker of "
            f"the fleet (memory held by busy runners), e.g.: {placeable[0].detail[:400]}"
        )
    if failures:
        text += " Failed loads were logged by the scheduler, e.g.: " + " | ".join(
            failures[0].log_sample[:2]
        )
    return text


async def run(args: argparse.Namespace, root: Path) -> tuple[list[Model], list[ScenarioResult]]:
    results = []
    async with ProcessGroup(root) as group:
        _, registry = await group.start_registry(args.store or root / "models")
        started = time.monotonic()
        models, _ = await package_models(registry, args.gguf, args.seed)
        progress(f"packaged 40 models in {time.monotonic() - started:.0f} s")
        for scenario in scenarios():
            results.append(await run_scenario(group, registry, models, scenario, args))
    return models, results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--hold", type=float, default=1.0, help="mean lease seconds")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--load-time", type=float, default=2.0, help="simulated load seconds")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds not measured")
    parser.add_argument("--duration", type=float, default=50.0, help="measured seconds")
    parser.add_argument("--max-replicas", type=int, default=2, help="SCHEDULER_MAX_REPLICAS")
    parser.add_argument(
        "--max-runners", type=int, default=4, help="WORKER_MAX_RUNNERS of each simulated worker"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="5 s warm-up, 15 s measured")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="model store to keep the 40 packaged models in and reuse on later runs "
        "(packaging them takes 1-3 minutes on the 2-core machine); default: a temp dir",
    )
    args = parser.parse_args()
    args.gguf = args.gguf.resolve()
    if args.store is not None:
        args.store = args.store.resolve()
    if args.quick:
        args.warmup, args.duration = 5.0, 15.0
    with tempfile.TemporaryDirectory(prefix="placement-bench-", dir=args.work_dir) as tmp:
        models, results = asyncio.run(run(args, Path(tmp)))
    print(
        f"\n40 models (SmolLM2 weights, {SLOTS} slots, --cache-ram {PROMPT_CACHE_MIB} MiB; "
        f"scheduler estimates): {model_line(models, args.zipf)}. Zipf exponent {args.zipf:g}, "
        f"{args.rate:g} requests/s (Poisson), lease hold exp(mean {args.hold:g} s), simulated "
        f"load {args.load_time:g} s, SCHEDULER_MAX_REPLICAS={args.max_replicas}, "
        f"WORKER_MAX_RUNNERS={args.max_runners}, {args.warmup:g} s warm-up then "
        f"{args.duration:g} s measured per scenario.\n"
    )
    print(result_table(results))
    print()
    print(summary(results))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
