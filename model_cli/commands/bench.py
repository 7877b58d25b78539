"""`bench MODEL`: tokens/s and TTFT at concurrency 1, 2, 4, 8."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import typer

from model_cli.bench import DEFAULT_PROMPT, LevelResult, bench_table, measure, run_level
from model_cli.chat import ChatOptions
from model_cli.commands.common import checked_reference, ensure_model, print_line
from model_cli.render import print_json
from model_cli.state import state_of

__all__ = ["parse_levels", "register"]

Json = Any


def parse_levels(text: str) -> list[int]:
    """`1,2,4,8` -> [1, 2, 4, 8]; a usage error for anything else."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or any(level < 1 for level in levels):
        raise typer.BadParameter(
            f"expected positive integers separated by commas, got {text!r}",
            param_hint="--concurrency",
        )
    return levels


def bench(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model to benchmark")],
    concurrency: Annotated[
        str, typer.Option("--concurrency", "-c", help="Concurrency levels, comma-separated")
    ] = "1,2,4,8",
    requests: Annotated[
        int,
        typer.Option("--requests", "-n", min=1, help="Requests per level (at least one per slot)"),
    ] = 8,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Tokens per answer")] = 128,
    prompt: Annotated[str, typer.Option("--prompt", help="The prompt every request sends")] = (
        DEFAULT_PROMPT
    ),
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON")] = False,
) -> None:
    """Measure tokens/s and time to first token at several concurrency levels."""
    levels = parse_levels(concurrency)
    checked_reference(model, "MODEL")
    state = state_of(ctx)
    options = ChatOptions(temperature=0.0, seed=seed, max_tokens=max_tokens)
    body: dict[str, Json] = {
        **options.body(model, [{"role": "user", "content": prompt}]),
        # llama-server: generate exactly max_tokens, so every request does the same work.
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    results: list[LevelResult] = []
    with state.client(max_connections=max(levels)) as client:
        ensure_model(state, client, model)
        client.preload(model)
        send = partial(measure, client.stream_completion, body, state.clock)
        warm = send()
        if warm.error is not None:
            print_line(state.err, f"Warm-up request failed: {warm.error}")
        for level in levels:
            print_line(state.err, f"Concurrency {level}: {max(requests, level)} requests...")
            results.append(run_level(send, level, requests, state.clock))
    if as_json:
        print_json(
            {"model": model, "max_tokens": max_tokens, "levels": [r.as_json() for r in results]},
            state.stdout,
        )
    else:
        state.out.print(bench_table(model, results))


def register(app: typer.Typer) -> None:
    app.command()(bench)
