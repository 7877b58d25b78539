"""A fake gateway behind httpx.MockTransport (the CLI's only neighbour), a manual clock, and
`invoke`, which runs the real CLI in-process against them."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from model_cli.app import run_cli

Handler = Callable[[httpx.Request], httpx.Response]
HOST = "http://gateway.test:12434"


class ManualClock:
    def __init__(self, start: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self.now = start
        self.wall_now = wall

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


@dataclass
class FakeGateway:
    """Routes `(method, path)` to handlers; records every request it was sent."""

    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def json(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.route(method, path, lambda _: httpx.Response(status, json=body))

    def error(self, method: str, path: str, status: int, message: str) -> None:
        body = {"error": {"message": message, "type": "x", "param": None, "code": status}}
        self.json(method, path, body, status)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get((request.method, request.url.path))
        if handler is None:
            return httpx.Response(
                404, json={"error": {"message": f"no route {request.url.path}", "code": 404}}
            )
        return handler(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def sse(*events: dict[str, Any] | str) -> bytes:
    out = b""
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        out += f"data: {data}\n\n".encode()
    return out


def delta(text: str, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}], **extra}


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


Invoke = Callable[..., Result]


@pytest.fixture
def invoke(gateway: FakeGateway, clock: ManualClock) -> Iterator[Invoke]:
    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = run_cli(
            list(args),
            {"MODEL_RUNNER_HOST": HOST, **(env or {})},
            transport=gateway.transport(),
            clock=clock,
            stdin=io.StringIO(stdin),
            stdout=out,
            stderr=err,
        )
        return Result(code, out.getvalue(), err.getvalue())

    yield run
