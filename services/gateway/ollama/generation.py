"""`/api/chat`, `/api/generate`, `/api/embed` and `/api/embeddings` through the hot path.

Each request is translated (translate.py), sent as an OpenAI request through the same path as the
OpenAI routes (Assign -> Worker.Generate -> llama-server, with the routing hints of hints.py plus
the request's `keep_alive`), and the answer translated back (answers.py). Streams are opened
before the response starts, so a missing model is a real 404 and a full queue a real 503.

Ollama's load and unload idioms: a chat without messages, a generate without a prompt, an embed
without input loads the model (honouring `keep_alive`) and answers `done_reason: "load"`; the
same with `keep_alive: 0` unloads the model's idle runners (Scheduler.UnloadModels) and answers
`"unload"`. A runner serving a request at that moment stays until it is idle; any later request
with `keep_alive: 0` unloads it after use, as Ollama does.

`images` are refused (400) unless the model has a multimodal projector: without one llama-server
could not see them, and silently answering about an image it never saw would mislead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelrunner.v1 import common_pb2
from services.common.clock import Clock
from services.gateway import errors
from services.gateway.bodies import read_body_model
from services.gateway.context import GatewayContext
from services.gateway.hints import routing_hints
from services.gateway.inference import InferenceRequest, request_id_from
from services.gateway.ollama.answers import (
    Shape,
    StreamTranslator,
    complete_answer,
    status_answer,
)
from services.gateway.ollama.errors import error_line
from services.gateway.ollama.models import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
)
from services.gateway.ollama.options import keep_alive_seconds
from services.gateway.ollama.response import Lines, OllamaResponse, Whole, json_line
from services.gateway.ollama.translate import (
    Translated,
    chat_request,
    embeddings_request,
    generate_request,
    has_images,
)
from services.gateway.ollama.views import has_projector, rfc3339
from services.gateway.upstream import UpstreamAnswer, call_json, open_events

__all__ = ["Generation"]

_log = logging.getLogger(__name__)

_NANOS_PER_SECOND = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """What every step of one request needs to know about it."""

    request: Request
    request_id: str
    model: str
    keep_alive: float | None
    started: float


def _model(name: str) -> str:
    if not name:
        raise errors.InvalidRequest("model is required", param="model")
    return name


class Generation:
    def __init__(self, context: GatewayContext, clock: Clock) -> None:
        self._context = context
        self._clock = clock

    async def chat(self, request: Request) -> Response:
        started = self._clock.monotonic()
        body = await read_body_model(request, ChatRequest, self._context.settings.max_body_bytes)
        call = self._call(request, body.model_name, body.keep_alive, started)
        if not body.messages:
            return OllamaResponse(lambda: self._load_or_unload(call, Shape.CHAT), call.request_id)
        translated = chat_request(body)

        async def produce() -> Whole | Lines:
            if has_images(body):
                await self._check_vision(call.model)
            return await self._generate(call, translated, Shape.CHAT, body.streaming)

        return OllamaResponse(produce, call.request_id)

    async def generate(self, request: Request) -> Response:
        started = self._clock.monotonic()
        limit = self._context.settings.max_body_bytes
        body = await read_body_model(request, GenerateRequest, limit)
        call = self._call(request, body.model_name, body.keep_alive, started)
        if not body.prompt and not body.images:
            return OllamaResponse(
                lambda: self._load_or_unload(call, Shape.GENERATE), call.request_id
            )
        translated = generate_request(body)

        async def produce() -> Whole | Lines:
            if has_images(body):
                await self._check_vision(call.model)
            return await self._generate(call, translated, Shape.GENERATE, body.streaming)

        return OllamaResponse(produce, call.request_id)

    async def embed(self, request: Request) -> Response:
        started = self._clock.monotonic()
        body = await read_body_model(request, EmbedRequest, self._context.settings.max_body_bytes)
        call = self._call(request, body.model_name, body.keep_alive, started)
        inputs = [body.input] if isinstance(body.input, str) else list(body.input)
        dimensions = body.dimensions
        if dimensions is not None and dimensions <= 0:
            raise errors.InvalidRequest("dimensions must be a positive integer", param="dimensions")

        async def produce() -> Whole:
            if not any(inputs):
                await self._load_or_unload(call, Shape.GENERATE)
                return Whole({"model": call.model, "embeddings": []})
            answer, vectors = await self._embeddings(call, inputs)
            if dimensions is not None:
                vectors = [_shorten(vector, dimensions) for vector in vectors]
            usage = answer.get("usage")
            prompt_tokens = usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0
            return Whole(
                {
                    "model": call.model,
                    "embeddings": vectors,
                    "total_duration": self._elapsed_ns(call),
                    "prompt_eval_count": prompt_tokens,
                }
            )

        return OllamaResponse(produce, call.request_id)

    async def embeddings(self, request: Request) -> Response:
        """The legacy route: one prompt, `{"embedding": [...]}`; an empty prompt only loads."""
        started = self._clock.monotonic()
        limit = self._context.settings.max_body_bytes
        body = await read_body_model(request, EmbeddingsRequest, limit)
        call = self._call(request, body.model_name, body.keep_alive, started)

        async def produce() -> Whole:
            if not body.prompt:
                await self._load_or_unload(call, Shape.GENERATE)
                return Whole({"embedding": []})
            _, [vector] = await self._embeddings(call, [body.prompt])
            return Whole({"embedding": vector})

        return OllamaResponse(produce, call.request_id)

    # ---------------------------------------------------------------------------------------

    def _call(self, request: Request, name: str, keep_alive: object, started: float) -> _Call:
        return _Call(
            request=request,
            request_id=request_id_from(request.headers),
            model=_model(name),
            keep_alive=keep_alive_seconds(keep_alive),
            started=started,
        )

    def _elapsed_ns(self, call: _Call) -> int:
        return max(round((self._clock.monotonic() - call.started) * _NANOS_PER_SECOND), 0)

    def _now(self) -> str:
        return rfc3339(self._clock.wall())

    def _inference_request(
        self, call: _Call, translated: Translated, stream: bool
    ) -> InferenceRequest:
        hints = routing_hints(
            call.request.headers, translated.payload, translated.endpoint, self._context.settings
        )
        if call.keep_alive is not None:
            hints = dataclasses.replace(hints, keep_alive=call.keep_alive)
        return InferenceRequest(
            request_id=call.request_id,
            endpoint=translated.endpoint,
            model=call.model,
            stream=stream,
            body=orjson.dumps(translated.payload),
            hints=hints,
        )

    async def _check_vision(self, model: str) -> None:
        with errors.translate_rpc_errors("registry"):
            found = await self._context.registry.inspect_model(model)
        if not has_projector(found):
            raise errors.InvalidRequest(
                f"model {model!r} does not support images: it has no multimodal projector",
                param="images",
            )

    async def _load_or_unload(self, call: _Call, shape: Shape) -> Whole:
        if call.keep_alive == 0:
            # Unknown models are a 404 here too, as in Ollama, not a quiet "nothing unloaded".
            with errors.translate_rpc_errors("registry"):
                await self._context.registry.inspect_model(call.model)
            with errors.translate_rpc_errors("scheduler"):
                await self._context.scheduler.unload_models(unload_all=False, models=[call.model])
            reason = "unload"
        else:
            translated = Translated(common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS, {})
            await self._context.inference.preload(
                self._inference_request(call, translated, stream=False)
            )
            reason = "load"
        return Whole(status_answer(call.model, shape, self._now(), reason))

    async def _generate(
        self, call: _Call, translated: Translated, shape: Shape, stream: bool
    ) -> Whole | Lines:
        inference_request = self._inference_request(call, translated, stream)
        chat_events = translated.endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
        if not stream:
            answer = await call_json(self._context.inference, inference_request)
            return Whole(
                complete_answer(
                    answer,
                    model=call.model,
                    shape=shape,
                    chat_events=chat_events,
                    created_at=self._now(),
                    total_ns=self._elapsed_ns(call),
                )
            )
        cleanup = contextlib.AsyncExitStack()
        upstream = await cleanup.enter_async_context(
            open_events(self._context.inference, inference_request)
        )
        translator = StreamTranslator(
            model=call.model, shape=shape, chat_events=chat_events, now=self._now
        )
        return Lines(
            self._lines(call, upstream, translator),
            cleanup,
            headers={"X-Worker-Id": upstream.worker_id},
        )

    async def _lines(
        self, call: _Call, upstream: UpstreamAnswer, translator: StreamTranslator
    ) -> AsyncGenerator[bytes, None]:
        try:
            async for event in upstream.events():
                for piece in translator.feed(event):
                    yield json_line(piece)
            for piece in translator.finish(self._elapsed_ns(call)):
                yield json_line(piece)
        except errors.GatewayError as err:
            _log.warning(
                "request %s (model %r): stream failed after the head: %s",
                call.request_id,
                call.model,
                err.message,
            )
            yield error_line(err)

    async def _embeddings(
        self, call: _Call, inputs: list[str]
    ) -> tuple[dict[str, Any], list[list[float]]]:
        translated = embeddings_request(call.model, inputs)
        answer = await call_json(
            self._context.inference, self._inference_request(call, translated, stream=False)
        )
        return answer, _vectors(answer, len(inputs))


def _vectors(answer: dict[str, Any], expected: int) -> list[list[float]]:
    data = answer.get("data")
    if not isinstance(data, list) or len(data) != expected:
        raise errors.UpstreamError(
            f"llama-server answered {len(data) if isinstance(data, list) else 'no'} embeddings "
            f"for {expected} inputs"
        )
    ordered = sorted(
        (item for item in data if isinstance(item, dict)),
        key=lambda item: item.get("index", 0) if isinstance(item.get("index"), int) else 0,
    )
    vectors: list[list[float]] = []
    for item in ordered:
        embedding = item.get("embedding")
        if not isinstance(embedding, list):
            raise errors.UpstreamError("llama-server answered embeddings in an unexpected shape")
        vectors.append(embedding)
    if len(vectors) != expected:
        raise errors.UpstreamError("llama-server answered embeddings in an unexpected shape")
    return vectors


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    """Ollama's `dimensions`: the first N values, scaled back to unit length."""
    if dimensions > len(vector):
        raise errors.InvalidRequest(
            f"dimensions {dimensions} is more than the model's {len(vector)}", param="dimensions"
        )
    head = vector[:dimensions]
    norm = math.sqrt(sum(value * value for value in head))
    return [value / norm for value in head] if norm > 0 else head
