"""Gateway vs direct llama-server, side by side in one run.

Starts the local stack on free ports with the bundled SmolLM2 GGUF, warms the model up through the
gateway, then sends the same streaming chat workload at concurrency 1, 4 and 8 both through the
gateway (HTTP -> gateway -> gRPC -> worker -> llama-server) and straight to the worker's
llama-server over its Unix socket. Rounds alternate between the two paths so machine noise hits
both alike. Prints aggregate output tokens/s and TTFT p50/p95 for each path and their ratio.

    .venv/bin/python bench/gateway_overhead.py --gguf .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from services.stack.config import StackSettings
from services.stack.launcher import LocalStack

MODEL = "ai/smollm2"
_SEND_ATTEMPTS = 3


@dataclass
class Sample:
    ttft: float
    tokens: int


@dataclass
class PathResult:
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall if self.wall else 0.0

    def ttft_ms(self, quantile: float) -> float:
        values = sorted(s.ttft for s in self.samples)
        if len(values) == 1:
            return values[0] * 1000
        return (
            statistics.quantiles(values, n=100, method="inclusive")[int(quantile * 100) - 1] * 1000
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _llama_socket(worker_pid: int) -> str:
    """The Unix socket of the llama-server the worker started (from its command line)."""
    for task in Path(f"/proc/{worker_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"--host" in argv:
                return argv[argv.index(b"--host") + 1].decode()
    raise RuntimeError("no llama-server found under the worker")


async def _one(client: httpx.AsyncClient, url: str, body: bytes) -> Sample:
    start = time.perf_counter()
    for attempt in range(_SEND_ATTEMPTS):
        try:
            return await _stream(client, url, body, start)
        except httpx.RemoteProtocolError as exc:
            # llama-server sometimes closes a connection without reading the request that
            # follows a streamed answer; the worker resends in that case, and so does the direct
            # path, so both pay the same (time counts from the first attempt).
            if "without sending a response" not in str(exc) or attempt == _SEND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _stream(client: httpx.AsyncClient, url: str, body: bytes, start: float) -> Sample:
    ttft = 0.0
    tokens = 0
    async with client.stream("POST", url, content=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = orjson.loads(line[6:])
            choices = event.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content") and not ttft:
                ttft = time.perf_counter() - start
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    return Sample(ttft=ttft, tokens=tokens)


async def _round(
    client: httpx.AsyncClient, url: str, body: bytes, concurrency: int, requests: int
) -> PathResult:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    result = PathResult()

    async def runner() -> None:
        while not queue.empty():
            queue.get_nowait()
            result.samples.append(await _one(client, url, body))

    start = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    result.wall = time.perf_counter() - start
    return result


def _merge(results: list[PathResult]) -> PathResult:
    merged = PathResult()
    for result in results:
        merged.samples.extend(result.samples)
        merged.wall += result.wall
    return merged


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=16, help="requests per path per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per path")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="llama-server --threads (WORKER_LLAMA_THREADS; 0 = every core); default: the worker's",
    )
    args = parser.parse_args()

    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a short story about a lighthouse."}],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "seed": 42,
            # Fixed-length answers make the two paths do identical work.
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    with tempfile.TemporaryDirectory(prefix="mr-bench-") as tmp:
        environ = {
            **os.environ,
            "MODEL_RUNNER_PORT": str(_free_port()),
            "REGISTRY_ADDRESS": f"127.0.0.1:{_free_port()}",
            "SCHEDULER_ADDRESS": f"127.0.0.1:{_free_port()}",
            "WORKER_ADVERTISE_ADDRESS": f"127.0.0.1:{_free_port()}",
            "MODELS_PATH": f"{tmp}/models",
            "WORKER_CACHE_PATH": f"{tmp}/cache",
            "MODEL_RUNNER_LOG_DIR": f"{tmp}/logs",
            "LOG_LEVEL": "WARNING",
        }
        if args.threads is not None:
            environ["WORKER_LLAMA_THREADS"] = str(args.threads)
        async with LocalStack(
            StackSettings.from_env(environ), environ, args.gguf.resolve()
        ) as stack:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            timeout = httpx.Timeout(120.0)
            gateway_url = stack.gateway_url + "/engines/llama.cpp/v1/chat/completions"
            async with httpx.AsyncClient(limits=limits, timeout=timeout) as gateway:
                await _one(gateway, gateway_url, body)  # loads the model
                assert stack.worker.pid is not None
                transport = httpx.AsyncHTTPTransport(
                    uds=_llama_socket(stack.worker.pid), limits=limits
                )
                async with httpx.AsyncClient(transport=transport, timeout=timeout) as direct:
                    direct_url = "http://llama/v1/chat/completions"
                    await _one(direct, direct_url, body)
                    rows = []
                    for concurrency in args.concurrency:
                        runs: dict[str, list[PathResult]] = {"direct": [], "gateway": []}
                        for _ in range(args.rounds):
                            runs["direct"].append(
                                await _round(direct, direct_url, body, concurrency, args.requests)
                            )
                            runs["gateway"].append(
                                await _round(gateway, gateway_url, body, concurrency, args.requests)
                            )
                        rows.append((concurrency, _merge(runs["direct"]), _merge(runs["gateway"])))

    print(
        f"\nSmolLM2-135M Q4_1, {args.max_tokens} output tokens/request, "
        f"{args.requests} requests x {args.rounds} rounds per path and concurrency, "
        f"llama-server threads: {args.threads if args.threads is not None else 'worker default'}\n"
    )
    print(
        "| concurrency | direct tok/s | gateway tok/s | ratio | direct TTFT p50 / p95 (ms) | gateway TTFT p50 / p95 (ms) | added TTFT p50 (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency, direct_result, gateway_result in rows:
        d50, d95 = direct_result.ttft_ms(0.5), direct_result.ttft_ms(0.95)
        g50, g95 = gateway_result.ttft_ms(0.5), gateway_result.ttft_ms(0.95)
        ratio = gateway_result.tokens_per_second / direct_result.tokens_per_second
        print(
            f"| {concurrency} | {direct_result.tokens_per_second:.1f} | "
            f"{gateway_result.tokens_per_second:.1f} | {ratio:.3f} | {d50:.1f} / {d95:.1f} | "
            f"{g50:.1f} / {g95:.1f} | {g50 - d50:+.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
