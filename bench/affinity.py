"""Affinity routing vs round-robin: multi-turn chats over 2 real workers, side by side in one run.

One registry process holds SmolLM2-135M-Instruct Q4_1 packaged with a 2,048-token context. Two
clusters share it, each a real scheduler, a real gateway and two real workers, each worker with
one llama-server (2 slots, `--threads 1`, so the four fit on two cores; only one cluster works at
a time): cluster A routes with SCHEDULER_ROUTING=affinity (the default), cluster B with
round-robin. The model is configured with min_replicas=2 on both, so each cluster serves it from
both of its workers for the whole run. With 2 slots, affinity's load guard allows an imbalance
of 1 (SCHEDULER_AFFINITY_MAX_IMBALANCE is capped at slots - 2 but kept >= 1): a conversation
stays on its worker while that has a free slot; `--max-imbalance 0` makes it yield to an idle
worker instead. When its worker is full, a turn waits up to SCHEDULER_AFFINITY_WAIT for a slot
there rather than prefill its history on the other worker; `--affinity-wait 0` turns that off.

llama-server keeps prompts in RAM across its slots (`--cache-ram`, SCHEDULER_PROMPT_CACHE_MIB), so
round-robin also finds most of a conversation's history cached on turns >= 3 (the other worker
served turn n-2); affinity saves the turn-2 miss and the last exchange. `--cache-ram 0` shows the
comparison without that cache.

The workload: conversations of several turns, each opening with a long distinct system prompt
(~800 tokens) so that prefill dominates time to first token, and each turn resending the whole
history plus the model's own previous answers, as chat clients do. A conversation pauses 0-1 s
(seeded, the same in every mode) between turns; at most `--concurrency` requests are in flight:
2 by default (half the slots: whether two requests in flight share a one-thread worker is then
chance) and 4 (every slot of both workers busy: where a full worker forces a choice between a
wait and a cold prefill). Each concurrency gets a table of its own.
Streamed, temperature 0, seed 42. Three modes run in each round, in an order that rotates from
round to round so machine noise hits all of them:

- round-robin: cluster B (hints are sent but ignored);
- affinity, prefix: cluster A, no session header (the gateway's prefix hashes only);
- affinity, session: cluster A with `X-Session-ID: <conversation>`.

Every mode and round gets conversations of its own (a distinct id opens each system prompt, the
rest of the text is the same per conversation index), so no mode finds another's prefixes in a
llama-server cache, and every mode does the same amount of work.

Reported per mode: TTFT p50/p95 over all turns and over turns >= 2; llama.cpp's prompt tokens
served from its cache (`timings.cache_n`) over all prompt tokens (`cache_n + prompt_n`) for turns
>= 2; how often a turn landed on the worker of the previous turn; how many requests shared their
worker with another one in flight (a one-thread llama-server then splits its core between them);
how the conversations' first turns spread over the two workers; and the TTFT ratio to
round-robin.

    .venv/bin/python bench/affinity.py                      # ~12 minutes (concurrency 2 and 4)
    .venv/bin/python bench/affinity.py --max-imbalance 0    # affinity that always yields to load
    .venv/bin/python bench/affinity.py --cache-ram 0        # without llama.cpp's RAM prompt cache
    .venv/bin/python bench/affinity.py --quick              # ~2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

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
    wait_workers,
)
from modelrunner.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
from services.common.grpc_client import open_channel  # noqa: E402
from services.scheduler.config import SchedulerSettings  # noqa: E402
from tests.support.processes import wait_until  # noqa: E402

MODEL = "ai/smollm2"
CONTEXT = 2048
SLOTS = 2
MAX_TOKENS = 24
_READY_TIMEOUT = 120.0
_REQUEST_TIMEOUT = 120.0
# Nautical vocabulary: plain words, one or two tokens each.
_VOCABULARY = (
    "harbour lantern keeper storm tide rope anchor gull compass chart reef beacon signal "
    "mast sail hull deck cabin voyage captain crew current wave shore cliff rock fog horn "
    "bell island channel pier dock cargo ledger brass glass oil wick flame night dawn dusk "
    "wind north south east west mile league knot fathom depth shoal sand pebble shell kelp "
    "salt spray foam ripple swell squall gale calm weather barometer almanac logbook journal"
)
# Words of the system prompt after its id line: about 900 SmolLM2 tokens.
_SYSTEM_WORDS = 560


@dataclass(frozen=True)
class Mode:
    name: str
    cluster: str
    session: bool


MODES = (
    Mode("round-robin", "rr", session=False),
    Mode("affinity, prefix", "affinity", session=False),
    Mode("affinity, session", "affinity", session=True),
)


@dataclass
class Turn:
    conversation: str
    turn: int
    ttft: float
    cache_n: int
    prompt_n: int
    worker: str
    # perf_counter seconds: when the request was sent and when its stream ended.
    started: float
    ended: float


@dataclass
class ModeResult:
    turns: list[Turn] = field(default_factory=list)

    def ttft_ms(self, fraction: float, *, later_only: bool = False) -> float:
        values = [t.ttft for t in self.turns if t.turn > 0 or not later_only]
        return percentile(values, fraction) * 1000

    def cached_fraction(self) -> tuple[int, int]:
        later = [t for t in self.turns if t.turn > 0]
        return sum(t.cache_n for t in later), sum(t.cache_n + t.prompt_n for t in later)

    def stayed(self) -> float:
        """Turns >= 2 served by the worker that served the conversation's previous turn."""
        by_conversation: dict[str, list[Turn]] = {}
        for turn in self.turns:
            by_conversation.setdefault(turn.conversation, []).append(turn)
        same = total = 0
        for turns in by_conversation.values():
            ordered = sorted(turns, key=lambda t: t.turn)
            for previous, current in itertools.pairwise(ordered):
                total += 1
                same += previous.worker == current.worker
        return same / total if total else 0.0

    def split(self) -> str:
        """How many conversations each worker served first ("w1/w2" by worker id order)."""
        first = Counter(t.worker for t in self.turns if t.turn == 0)
        return "/".join(str(first[worker]) for worker in sorted(first))

    def _sharing(self, turn: Turn) -> bool:
        return any(
            other is not turn
            and other.worker == turn.worker
            and other.started < turn.ended
            and turn.started < other.ended
            for other in self.turns
        )

    def shared(self) -> float:
        """Requests that had another request of this mode in flight on the same worker for at
        least part of their time: on a one-thread llama-server they split its core."""
        shared = sum(1 for turn in self.turns if self._sharing(turn))
        return shared / len(self.turns) if self.turns else 0.0

    def later_ttft_ms_by_sharing(self) -> tuple[float, float]:
        """TTFT p50 of turns >= 2 that had their worker to themselves, and of those that did not."""
        later = [t for t in self.turns if t.turn > 0]
        alone = [t.ttft for t in later if not self._sharing(t)]
        shared = [t.ttft for t in later if self._sharing(t)]
        return percentile(alone, 0.5) * 1000, percentile(shared, 0.5) * 1000


def system_prompt(conversation_id: str, index: int) -> str:
    words = random.Random(index).choices(_VOCABULARY.split(), k=_SYSTEM_WORDS)
    return (
        f"Conversation {conversation_id}. You are the keeper of lighthouse number {index}. "
        "Here is the station's logbook, which you must know by heart: " + " ".join(words) + "."
    )


def question(index: int, turn: int) -> str:
    words = random.Random(index * 1000 + turn).choices(_VOCABULARY.split(), k=12)
    return (
        f"Question {turn + 1}: in one sentence, what does the logbook say about {' '.join(words)}?"
    )


async def _turn(
    client: httpx.AsyncClient,
    url: str,
    messages: list[dict[str, str]],
    session: str | None,
) -> tuple[float, str, int, int, str]:
    """(ttft, answer, cache_n, prompt_n, worker) of one streamed chat completion."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "seed": 42,
        "stream": True,
    }
    headers = {"X-Session-ID": session} if session else {}
    start = time.perf_counter()
    ttft = 0.0
    answer: list[str] = []
    timings: dict[str, Any] = {}
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
        worker = response.headers.get("x-worker-id", "")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"{url}: stream error {event['error']}")
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if not ttft:
                        ttft = time.perf_counter() - start
                    answer.append(content)
            if event.get("timings"):
                timings = event["timings"]
    if not timings:
        raise RuntimeError("llama-server sent no timings in the stream")
    return (
        ttft,
        "".join(answer),
        int(timings.get("cache_n", 0)),
        int(timings.get("prompt_n", 0)),
        worker,
    )


async def run_mode(
    client: httpx.AsyncClient,
    gateway: str,
    mode: Mode,
    round_number: int,
    conversations: int,
    turns: int,
    concurrency: int,
    think: float,
) -> ModeResult:
    result = ModeResult()
    gate = asyncio.Semaphore(concurrency)
    url = gateway + "/engines/v1/chat/completions"
    tag = f"{concurrency}-{round_number}{mode.cluster[0]}{int(mode.session)}"

    async def conversation(index: int) -> None:
        conversation_id = f"{tag}-{index:02d}"
        messages = [{"role": "system", "content": system_prompt(conversation_id, index)}]
        # The user's reading and typing time, the same in every mode: without it the turns
        # would interleave in a fixed order and round-robin would send every conversation to
        # the same worker each turn (an even number of them over two workers).
        pauses = random.Random(f"think-{index}")
        for turn in range(turns):
            messages.append({"role": "user", "content": question(index, turn)})
            async with gate:
                started = time.perf_counter()
                ttft, answer, cache_n, prompt_n, worker = await _turn(
                    client, url, messages, conversation_id if mode.session else None
                )
                ended = time.perf_counter()
            result.turns.append(
                Turn(conversation_id, turn, ttft, cache_n, prompt_n, worker, started, ended)
            )
            messages.append({"role": "assistant", "content": answer})
            await asyncio.sleep(pauses.uniform(0, 2 * think))

    async with asyncio.TaskGroup() as group:
        for index in range(conversations):
            group.create_task(conversation(index))
    return result


async def start_cluster(
    group: ProcessGroup,
    name: str,
    routing: str,
    registry_address: str,
    imbalance: int,
    affinity_wait: float,
) -> tuple[str, str]:
    """Scheduler, two workers and a gateway; returns (gateway URL, scheduler address)."""
    _, scheduler = await group.start_scheduler(
        f"scheduler-{name}",
        registry_address,
        {
            "SCHEDULER_ROUTING": routing,
            "SCHEDULER_AFFINITY_MAX_IMBALANCE": str(imbalance),
            "SCHEDULER_AFFINITY_WAIT": f"{affinity_wait}s",
            "SCHEDULER_DEFAULT_PARALLEL": str(SLOTS),
            "SCHEDULER_DEFAULT_CONTEXT_SIZE": str(CONTEXT),
            "SCHEDULER_HEARTBEAT_INTERVAL": "0.5s",
            "MODEL_KEEP_ALIVE": "-1",
        },
    )
    for index in (1, 2):
        await group.start_worker(
            f"{name}-w{index}",
            scheduler,
            registry_address,
            {"WORKER_LLAMA_THREADS": "1", "WORKER_HEARTBEAT_INTERVAL": "0.5s"},
        )
    gateway = await group.start_gateway(
        f"gateway-{name}",
        {"SCHEDULER_ADDRESS": scheduler, "REGISTRY_ADDRESS": registry_address},
    )
    await wait_workers(scheduler, 2)
    return gateway, scheduler


async def place_on_both(scheduler: str, cache_ram_mib: int | None) -> None:
    """min_replicas=2: the autoscaler loads the model on both workers; wait until both serve.
    `cache_ram_mib` sets llama-server's RAM prompt cache (None: the scheduler's default)."""
    llama_args = [] if cache_ram_mib is None else ["--cache-ram", str(cache_ram_mib)]
    async with open_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        await stub.ConfigureModel(
            scheduler_pb2.ConfigureModelRequest(
                model=MODEL,
                config=common_pb2.ModelRuntimeConfig(
                    min_replicas=2,
                    max_replicas=2,
                    parallel=SLOTS,
                    context_size=CONTEXT,
                    llama_args=llama_args,
                ),
            ),
            timeout=30.0,
        )

        async def both_ready() -> bool:
            reply = await stub.ListPlacements(scheduler_pb2.ListPlacementsRequest(), timeout=5.0)
            ready = {
                p.worker_id
                for p in reply.placements
                if p.runner.state == common_pb2.RUNNER_STATE_READY
            }
            return len(ready) == 2

        await wait_until(both_ready, what="two READY replicas", timeout=_READY_TIMEOUT)


def _order(round_number: int) -> list[Mode]:
    shift = round_number % len(MODES)
    modes = list(MODES[shift:] + MODES[:shift])
    return modes if round_number % 2 == 0 else modes[::-1]


def report(results: dict[str, ModeResult], args: argparse.Namespace, concurrency: int) -> str:
    baseline = results[MODES[0].name]
    rows = []
    for mode in MODES:
        result = results[mode.name]
        cached, total = result.cached_fraction()
        rows.append(
            [
                mode.name,
                str(len(result.turns)),
                f"{result.ttft_ms(0.5):.0f} / {result.ttft_ms(0.95):.0f}",
                f"{result.ttft_ms(0.5, later_only=True):.0f} / "
                f"{result.ttft_ms(0.95, later_only=True):.0f}",
                f"{result.ttft_ms(0.5) / baseline.ttft_ms(0.5):.2f}",
                f"{cached:,} / {total:,} ({cached / max(1, total) * 100:.0f}%)",
                f"{result.stayed() * 100:.0f}%",
                f"{result.shared() * 100:.0f}%",
                result.split(),
            ]
        )
    table = markdown_table(
        [
            "mode",
            "requests",
            "TTFT p50 / p95, all turns (ms)",
            "TTFT p50 / p95, turns >= 2 (ms)",
            "TTFT p50 vs round-robin",
            "cached prompt tokens, turns >= 2",
            "turn on the previous turn's worker",
            "requests sharing a worker",
            "first turns per worker",
        ],
        rows,
    )
    return (
        f"\n{args.conversations} conversations x {args.turns} turns per mode and round, "
        f"{args.rounds} round(s), concurrency {concurrency}, pauses of 0-{2 * args.think:g} s "
        f"between turns, SCHEDULER_AFFINITY_MAX_IMBALANCE={args.max_imbalance}, "
        f"SCHEDULER_AFFINITY_WAIT={args.affinity_wait:g}s, "
        f"llama-server --cache-ram {_cache_ram_text(args.cache_ram)}, "
        "~800-token system prompts, "
        f"{MAX_TOKENS} output tokens, 2 workers x 1 llama-server (2 slots x {CONTEXT} tokens, "
        "1 thread) per cluster, SmolLM2-135M Q4_1.\n\n" + table
    )


def _cache_ram_text(mib: int | None) -> str:
    if mib is None:
        return f"{SchedulerSettings().default_prompt_cache_mib} MiB (the scheduler's default)"
    return f"{mib} MiB"


def summary(results: dict[str, ModeResult]) -> str:
    baseline = results[MODES[0].name]
    rr = baseline.ttft_ms(0.5)
    parts = []
    for mode in MODES[1:]:
        result = results[mode.name]
        p50 = result.ttft_ms(0.5)
        reduction = (1 - p50 / rr) * 100
        parts.append(
            f"{mode.name}: TTFT p50 {p50:.0f} ms vs {rr:.0f} ms round-robin "
            f"({reduction:.0f}% lower; target >= 30%: {'met' if reduction >= 30 else 'missed'})"
        )
    split = ", ".join(
        f"{m.name} {alone:.0f} / {shared:.0f} ms"
        for m in MODES
        for alone, shared in [results[m.name].later_ttft_ms_by_sharing()]
    )
    parts.append(
        "TTFT p50 of turns >= 2 with the worker to themselves / sharing it with another request: "
        + split
    )
    cached = {m.name: results[m.name].cached_fraction() for m in MODES}
    share = {name: c / max(1, t) * 100 for name, (c, t) in cached.items()}
    return (
        "; ".join(parts)
        + ". Share of prompt tokens on turns >= 2 that llama.cpp took from its cache: "
        + ", ".join(f"{name} {value:.0f}%" for name, value in share.items())
        + "."
    )


async def run(args: argparse.Namespace, root: Path) -> dict[int, dict[str, ModeResult]]:
    """Results per concurrency, then per mode."""
    results = {c: {mode.name: ModeResult() for mode in MODES} for c in args.concurrency}
    async with ProcessGroup(root) as group:
        _, registry = await group.start_registry(root / "models")
        await package(registry, args.gguf, MODEL, context_size=CONTEXT)
        gateways = {}
        for name, routing in (("affinity", "affinity"), ("rr", "round-robin")):
            progress(f"starting cluster {name} ({routing})")
            gateway, scheduler = await start_cluster(
                group, name, routing, registry, args.max_imbalance, args.affinity_wait
            )
            await place_on_both(scheduler, args.cache_ram)
            gateways[name] = gateway
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(timeout=_REQUEST_TIMEOUT, limits=limits) as client:
            for name, gateway in gateways.items():
                # Warm-up: first requests pay for connections and llama.cpp's first graph.
                await run_mode(client, gateway, Mode("warm-up", name, False), -1, 2, 1, 2, 0.0)
            for concurrency in args.concurrency:
                for round_number in range(args.rounds):
                    for mode in _order(round_number):
                        progress(
                            f"concurrency {concurrency}, round {round_number + 1}: {mode.name}"
                        )
                        result = await run_mode(
                            client,
                            gateways[mode.cluster],
                            mode,
                            round_number,
                            args.conversations,
                            args.turns,
                            concurrency,
                            args.think,
                        )
                        results[concurrency][mode.name].turns.extend(result.turns)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[2, 4],
        help="requests in flight at most; one table per value (4 = every slot of both workers)",
    )
    parser.add_argument(
        "--think", type=float, default=0.5, help="mean pause between a conversation's turns (s)"
    )
    parser.add_argument(
        "--max-imbalance",
        type=int,
        default=SchedulerSettings().affinity_max_imbalance,
        help="SCHEDULER_AFFINITY_MAX_IMBALANCE of both clusters (default: the scheduler's)",
    )
    parser.add_argument(
        "--affinity-wait",
        type=float,
        default=SchedulerSettings().affinity_wait,
        metavar="SECONDS",
        help="SCHEDULER_AFFINITY_WAIT of both clusters (default: the scheduler's)",
    )
    parser.add_argument(
        "--cache-ram",
        type=int,
        default=None,
        metavar="MIB",
        help="llama-server's RAM prompt cache, 0 = off (default: SCHEDULER_PROMPT_CACHE_MIB)",
    )
    parser.add_argument("--quick", action="store_true", help="4 conversations x 4 turns, 1 round")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the temp dir")
    args = parser.parse_args()
    args.gguf = args.gguf.resolve()
    if args.quick:
        args.conversations, args.turns, args.rounds = 4, 4, 1
    with tempfile.TemporaryDirectory(prefix="affinity-bench-", dir=args.work_dir) as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    for concurrency, by_mode in results.items():
        print(report(by_mode, args, concurrency))
        print()
        print(summary(by_mode))
    if any(not result.turns for by_mode in results.values() for result in by_mode.values()):
        raise SystemExit("a mode produced no results")


if __name__ == "__main__":
    main()
