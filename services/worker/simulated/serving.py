"""One simulated llama-server: slots, prompt cache, pacing, answers and metrics.

It is the runner's client too (`forward`, `metrics`), so the Generate path is the same code as
with llama-server. Pacing: a request waits for a slot, then its uncached prompt tokens take
tokens / prompt rate, then each token 1 / token rate; every figure in `timings` is the simulated
duration, so benchmarks read the same numbers whatever the host's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from services.common.clock import Clock
from services.worker.engine import Endpoint
from services.worker.errors import UpstreamError
from services.worker.simulated import answers
from services.worker.simulated.answers import Answer
from services.worker.simulated.prompts import BadRequest, SimRequest, parse_request
from services.worker.simulated.slots import Slot, SlotPool, common_prefix

__all__ = ["DEFAULT_CONTEXT_SIZE", "SimulatedServer", "SimulationSettings"]

_JSON = "application/json; charset=utf-8"
_SSE = "text/event-stream"
# The simulated model's training context: a slot's size when the load names none.
DEFAULT_CONTEXT_SIZE = 4096


@dataclass(frozen=True)
class SimulationSettings:
    load_time: float = 1.0
    # Per slot: slots generate side by side at this rate each.
    tokens_per_second: float = 50.0
    prompt_tokens_per_second: float = 1000.0
    # Generated when a request sets no max_tokens.
    max_tokens: int = 16
    # Slots of a runner loaded with parallel 0.
    default_parallel: int = 4


@dataclass
class _Counters:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    tokens_predicted: int = 0
    predicted_seconds: float = 0.0


class _Response:
    def __init__(
        self, status_code: int, content_type: str, body: AsyncGenerator[bytes, None]
    ) -> None:
        self._status_code = status_code
        self._content_type = content_type
        self._body = body

    @property
    def status_code(self) -> int:
        return self._status_code

    @property
    def content_type(self) -> str:
        return self._content_type

    def chunks(self) -> AsyncGenerator[bytes, None]:
        return self._body


def _number(value: float) -> str:
    """Counters as integers where they are, never in exponent notation (1e+06)."""
    return str(value) if isinstance(value, int) else f"{value:.6f}"


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def _json(status: int, payload: dict[str, Any]) -> _Response:
    return _Response(status, _JSON, _once(json.dumps(payload, separators=(",", ":")).encode()))


class SimulatedServer:
    def __init__(
        self,
        *,
        alias: str,
        slots: int,
        context_size: int,
        settings: SimulationSettings,
        clock: Clock,
        id_prefix: str = "sim",
    ) -> None:
        self._alias = alias
        self._slots = SlotPool(slots)
        self._context_size = context_size or DEFAULT_CONTEXT_SIZE
        self._settings = settings
        self._clock = clock
        self._id_prefix = id_prefix
        self._ids = itertools.count(1)
        self._counters = _Counters()
        self._closed = False

    @property
    def slots(self) -> SlotPool:
        return self._slots

    def close(self) -> None:
        """Requests still running break off at their next token, as when a process dies."""
        self._closed = True

    # -- the client side -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def forward(
        self, endpoint: Endpoint, body: bytes, *, stream: bool
    ) -> AsyncIterator[_Response]:
        """Serve one request; a streamed answer holds its slot only while it is read."""
        if self._closed:
            raise UpstreamError("the simulated runner is stopped", connection_lost=True)
        try:
            request = parse_request(endpoint, body)
            self._check_context(request)
        except BadRequest as exc:
            yield _json(400, answers.error_body(400, str(exc)))
            return
        if request.stream and endpoint is not Endpoint.EMBEDDINGS:
            generator = self._stream(request)
            try:
                yield _Response(200, _SSE, generator)
            finally:
                await generator.aclose()
            return
        yield _json(200, await self._complete(request))

    async def metrics(self, *, timeout: float, max_bytes: int) -> str:
        """llama-server's GET /metrics families the scheduler and gateway read."""
        if self._closed:
            raise UpstreamError("the simulated runner is stopped")
        c = self._counters
        families = (
            (
                "prompt_tokens_total",
                "counter",
                "Number of prompt tokens processed.",
                c.prompt_tokens,
            ),
            ("prompt_seconds_total", "counter", "Prompt process time", c.prompt_seconds),
            (
                "tokens_predicted_total",
                "counter",
                "Number of generation tokens processed.",
                c.tokens_predicted,
            ),
            (
                "tokens_predicted_seconds_total",
                "counter",
                "Predict process time",
                c.predicted_seconds,
            ),
            (
                "requests_processing",
                "gauge",
                "Number of requests processing.",
                self._slots.processing,
            ),
            ("requests_deferred", "gauge", "Number of requests deferred.", self._slots.deferred),
        )
        text = "".join(
            f"# HELP llamacpp:{name} {help_text}\n# TYPE llamacpp:{name} {kind}\n"
            f"llamacpp:{name} {_number(value)}\n"
            for name, kind, help_text, value in families
        )
        if len(text) > max_bytes:
            raise UpstreamError(f"the simulated metrics exceed {max_bytes} bytes")
        return text

    # -- the simulated server side -------------------------------------------------------

    def _check_context(self, request: SimRequest) -> None:
        if len(request.tokens) >= self._context_size:
            raise BadRequest(
                f"the request exceeds the available context size ({len(request.tokens)} prompt "
                f"tokens, {self._context_size} per slot), try increasing it"
            )

    def _answer(self, request: SimRequest, cached: int, completion: int) -> Answer:
        prefix = "chatcmpl" if request.endpoint is Endpoint.CHAT_COMPLETIONS else "cmpl"
        settings = self._settings
        return Answer(
            id=f"{prefix}-{self._id_prefix}-{next(self._ids)}",
            model=self._alias,
            created=int(self._clock.wall()),
            prompt_tokens=len(request.tokens),
            cached_tokens=cached,
            completion_tokens=completion,
            prompt_ms=1000.0 * (len(request.tokens) - cached) / settings.prompt_tokens_per_second,
            predicted_ms=1000.0 * completion / settings.tokens_per_second,
        )

    def _plan(self, request: SimRequest, slot: Slot) -> Answer:
        """What the request will cost in `slot`; the slot keeps what stays valid of its cache."""
        if request.endpoint is Endpoint.EMBEDDINGS:
            # Embeddings are computed afresh and leave the slot's cache alone.
            return self._answer(request, 0, 0)
        # llama-server evaluates at least the last prompt token again, for its logits.
        cached = min(common_prefix(slot.cached, request.tokens), max(len(request.tokens) - 1, 0))
        del slot.cached[cached:]
        room = self._context_size - len(request.tokens)
        wanted = request.max_tokens or self._settings.max_tokens
        return self._answer(request, cached, max(0, min(wanted, room)))

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._closed:
            raise UpstreamError("the simulated runner stopped mid-response", connection_lost=True)

    async def _process_prompt(self, request: SimRequest, slot: Slot, answer: Answer) -> float:
        """Pay for the uncached prompt; returns the loop time it finished."""
        done = asyncio.get_running_loop().time() + answer.prompt_ms / 1000.0
        await self._sleep_until(done)
        if request.endpoint is not Endpoint.EMBEDDINGS:
            slot.cached[:] = request.tokens
        self._counters.prompt_tokens += answer.prompt_tokens - answer.cached_tokens
        self._counters.prompt_seconds += answer.prompt_ms / 1000.0
        return done

    def _generated(self, slot: Slot, index: int) -> None:
        slot.cached.append(f"token{index}")
        self._counters.tokens_predicted += 1
        self._counters.predicted_seconds += 1.0 / self._settings.tokens_per_second

    async def _complete(self, request: SimRequest) -> dict[str, Any]:
        async with self._slots.acquire(request.tokens) as slot:
            answer = self._plan(request, slot)
            started = await self._process_prompt(request, slot, answer)
            if request.endpoint is Endpoint.EMBEDDINGS:
                return answers.embeddings(answer, request.inputs)
            await self._sleep_until(started + answer.predicted_ms / 1000.0)
            for index in range(answer.completion_tokens):
                self._generated(slot, index)
        if request.endpoint is Endpoint.CHAT_COMPLETIONS:
            return answers.chat_completion(answer)
        return answers.text_completion(answer)

    async def _stream(self, request: SimRequest) -> AsyncGenerator[bytes, None]:
        chat = request.endpoint is Endpoint.CHAT_COMPLETIONS
        async with self._slots.acquire(request.tokens) as slot:
            answer = self._plan(request, slot)
            started = await self._process_prompt(request, slot, answer)
            interval = 1.0 / self._settings.tokens_per_second
            for index in range(answer.completion_tokens):
                await self._sleep_until(started + (index + 1) * interval)
                self._generated(slot, index)
                chunk = answers.chat_chunk if chat else answers.text_completion_chunk
                yield answers.sse(chunk(answer, index))
        yield answers.sse(
            answers.final_chat_chunk(answer) if chat else answers.final_completion_chunk(answer)
        )
        if request.include_usage:
            kind = "chat.completion.chunk" if chat else "text_completion"
            yield answers.sse(answers.usage_chunk(answer, kind))
        yield answers.DONE
