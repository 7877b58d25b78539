"""Fault injection under load: the faults of tests/integration/test_fault_injection.py with a
bigger load, one table row per fault.

One real stack (registry, scheduler, two workers with real llama-servers and SmolLM2-135M Q4_1,
1,024-token context, 2 slots each, one replica per worker; gateway), all separate processes. For
each scenario, `--clients` streaming clients (temperature 0, seed 7, `--max-tokens` tokens)
issue `--requests` chat requests in total; once streams are in flight the fault is injected and
the harness restarts what it killed. Every request is classified (tests/faults/load.py):
succeeded, failed clean (an OpenAI-shaped error status or error event, or a refused
connection), hung (no byte for `--idle-deadline` s), broken (anything else).

recovery s: fault -> end of the first request started after the fault that succeeded (clients
back off 0.5-2 s after a failure, which is part of it); healthy s: fault -> a replica ready on
every worker again; store intact: the registry's Verify found no corrupt or missing blob.

    .venv/bin/python bench/fault_injection.py                          # 8 clients, 64 requests
    .venv/bin/python bench/fault_injection.py --clients 4 --requests 24 --only "kill -9 worker"
    .venv/bin/python bench/fault_injection.py --keep /tmp/faults       # keep logs there
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.cluster import DEFAULT_GGUF, markdown_table, progress  # noqa: E402
from tests.faults.load import LoadPlan  # noqa: E402
from tests.faults.pull import prepare_upstream_model, pull_injector  # noqa: E402
from tests.faults.scenarios import SCENARIOS, Injector, ScenarioReport, run_scenario  # noqa: E402
from tests.faults.stack import MODEL, FaultStack, StackPlan, running_stack  # noqa: E402
from tests.integration.registry.conftest import running_registry  # noqa: E402

PULL = "kill -9 registry mid-pull"

HEADERS = [
    "scenario",
    "attempted",
    "succeeded",
    "failed clean",
    "hung",
    "broken",
    "recovery s",
    "healthy s",
    "store intact",
]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--idle-deadline", type=float, default=60.0)
    parser.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    parser.add_argument("--only", action="append", choices=[*SCENARIOS, PULL], default=[])
    parser.add_argument("--keep", type=Path, help="put the stack (and its logs) here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every request")
    return parser.parse_args()


def _details(report: ScenarioReport) -> None:
    for result in report.results:
        progress(
            f"  {result.index:4d} {result.outcome:12s} {result.worker:3s} "
            f"{result.ended - result.started:6.2f}s {result.detail}"
        )


async def _pull_scenario(stack: FaultStack, plan: LoadPlan, root: Path) -> ScenarioReport:
    with running_registry(root / "docker-registry") as upstream:
        reference = await prepare_upstream_model(stack, upstream.host, root)
        inject: Injector = pull_injector(reference)
        return await run_scenario(stack, PULL, plan, inject)


async def _main(args: argparse.Namespace) -> None:
    root = args.keep or Path(tempfile.mkdtemp(prefix="faults-"))
    root.mkdir(parents=True, exist_ok=True)
    plan = LoadPlan(
        model=MODEL,
        clients=args.clients,
        requests=args.requests,
        max_tokens=args.max_tokens,
        idle_deadline=args.idle_deadline,
    )
    names = args.only or [*SCENARIOS, PULL]
    reports = []
    started = time.monotonic()
    progress(f"starting the stack under {root}")
    async with running_stack(StackPlan(root=root, gguf=args.gguf.resolve())) as stack:
        for name in names:
            progress(f"{name}: {plan.clients} clients, {plan.requests} requests")
            if name == PULL:
                report = await _pull_scenario(stack, plan, root)
            else:
                report = await run_scenario(stack, name, plan, SCENARIOS[name])
            progress(f"  {report.row()} {report.record.notes}")
            if args.verbose:
                _details(report)
            reports.append(report)
    print(markdown_table(HEADERS, [report.row() for report in reports]))
    for report in reports:
        for note in report.record.notes:
            print(f"- {report.name}: {note}")
    progress(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    asyncio.run(_main(_arguments()))
