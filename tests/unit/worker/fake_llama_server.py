"""A stand-in llama-server, run as a real subprocess, for faults the real binary cannot show on demand.

It speaks just enough HTTP/1.1 on the Unix socket given by `--host`: GET /health (503 while
"loading", then 200), GET /metrics (llama.cpp-style Prometheus text counting the prompt words it
served), POST /v1/chat/completions, /v1/completions (streamed SSE or one JSON body) and
/v1/embeddings. Standard library only, so it starts in milliseconds.

Behaviour comes from the model file's first line (so each test model is a different fault):
    GGUF            normal
    CRASH <text>    print "<text>" to stderr and exit 1 at start
    SLOW <seconds>  answer /health 503 for that long (default: forever)
    METRICS-STALL   normal, but GET /metrics never answers
    METRICS-OFF     normal, but GET /metrics answers 501 (llama-server without --metrics)
    METRICS-HUGE    normal, but GET /metrics sends 2 MiB of comments first
and from flags (LLAMA_ARGS-style extra arguments):
    --fake-ready-delay S      /health says 503 for S seconds first
    --fake-exit-after N       exit with status 3 after serving N requests
    --fake-ignore-sigterm     only SIGKILL stops it
    --fake-drop-requests N    close the first N POST connections without answering (as
                              llama-server sometimes does right after a stream ends)
and per request, from a "fake" object in the JSON body:
    {"fake": {"stall_after": K}}   stop sending after K chunks, keep the connection open
    {"fake": {"crash_after": K}}   exit with status 3 after K chunks
The reply tokens are the words of the last message's content, so tests see their body arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--fake-ready-delay", type=float, default=0.0)
    parser.add_argument("--fake-exit-after", type=int, default=0)
    parser.add_argument("--fake-ignore-sigterm", action="store_true")
    parser.add_argument("--fake-drop-requests", type=int, default=0)
    args, _ = parser.parse_known_args()
    return args


class FakeServer:
    def __init__(self, args: argparse.Namespace, ready_at: float, first_line: str = "") -> None:
        self.args = args
        self.ready_at = ready_at
        self.first_line = first_line
        self.served = 0
        self.dropped = 0
        self.prompt_words = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "POST" and self.dropped < self.args.fake_drop_requests:
                    self.dropped += 1
                    return
                await self.route(method, path, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def route(
        self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        if method == "GET" and path == "/health":
            if time.monotonic() < self.ready_at:
                await self.send_json(
                    writer, 503, {"error": {"code": 503, "message": "Loading model"}}
                )
            else:
                await self.send_json(writer, 200, {"status": "ok"})
            return
        if method == "GET" and path == "/metrics":
            await self.metrics(writer)
            return
        if method != "POST" or path not in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
        ):
            await self.send_json(writer, 404, {"error": {"code": 404, "message": "File Not Found"}})
            return
        try:
            request = json.loads(body)
        except ValueError:
            await self.send_json(writer, 400, {"error": {"code": 400, "message": "invalid JSON"}})
            return
        self.served += 1
        self.prompt_words += len(_words(request))
        if path == "/v1/embeddings":
            await self.send_json(
                writer, 200, {"object": "list", "data": [{"embedding": [0.1, 0.2, 0.3]}]}
            )
        elif request.get("stream"):
            await self.stream(writer, request)
        else:
            text = "".join(_words(request))
            await self.send_json(
                writer,
                200,
                {"object": "chat.completion", "choices": [{"message": {"content": text}}]},
            )
        if self.args.fake_exit_after and self.served >= self.args.fake_exit_after:
            print(f"fake: exiting after {self.served} requests", file=sys.stderr, flush=True)
            os._exit(3)

    async def stream(self, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
        fake = request.get("fake") or {}
        assert isinstance(fake, dict)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        events = [{"choices": [{"delta": {"content": word}}]} for word in _words(request)]
        for index, event in enumerate(events):
            if fake.get("crash_after") == index:
                await writer.drain()
                print("fake: crashing mid-stream", file=sys.stderr, flush=True)
                os._exit(3)
            if fake.get("stall_after") == index:
                await writer.drain()
                await asyncio.sleep(3600)
            _chunk(writer, b"data: " + json.dumps(event).encode() + b"\n\n")
            await writer.drain()
        _chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def metrics(self, writer: asyncio.StreamWriter) -> None:
        if self.first_line.startswith("METRICS-STALL"):
            await asyncio.sleep(3600)
        if self.first_line.startswith("METRICS-OFF"):
            await self.send_json(
                writer,
                501,
                {"error": {"code": 501, "message": "This server does not support metrics"}},
            )
            return
        padding = (
            "# padding\n" * (2 * 1024 * 1024 // 10) if "METRICS-HUGE" in self.first_line else ""
        )
        text = (
            padding + "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
            "# TYPE llamacpp:prompt_tokens_total counter\n"
            f"llamacpp:prompt_tokens_total {self.prompt_words}\n"
            "# HELP llamacpp:requests_processing Number of requests processing.\n"
            "# TYPE llamacpp:requests_processing gauge\n"
            "llamacpp:requests_processing 0\n"
        )
        data = text.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    @staticmethod
    async def send_json(writer: asyncio.StreamWriter, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            501: "Not Implemented",
            503: "Service Unavailable",
        }[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()


def _words(request: dict[str, object]) -> list[str]:
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        content = str(messages[-1].get("content", ""))
    else:
        content = str(request.get("prompt", ""))
    words = content.split()
    return [words[0], *(" " + word for word in words[1:])] if words else ["..."]


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


async def serve(args: argparse.Namespace, first_line: str) -> None:
    ready_at = time.monotonic() + args.fake_ready_delay
    if first_line.startswith("SLOW"):
        seconds = first_line.removeprefix("SLOW").strip()
        ready_at = time.monotonic() + (float(seconds) if seconds else 1e9)
    server = FakeServer(args, ready_at, first_line)
    unix_server = await asyncio.start_unix_server(server.handle, path=args.host)
    async with unix_server:
        await unix_server.serve_forever()


def main() -> None:
    args = _parse()
    if args.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(args.model, "rb") as handle:
        first = handle.readline().decode(errors="replace").strip()
    print(
        f"fake llama-server: model {args.model}, first line {first[:40]!r}",
        file=sys.stderr,
        flush=True,
    )
    if first.startswith("CRASH"):
        print(first.removeprefix("CRASH").strip(), file=sys.stderr, flush=True)
        sys.exit(1)
    asyncio.run(serve(args, first))


if __name__ == "__main__":
    main()
