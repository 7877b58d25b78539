"""Anthropic Messages API routes: `/anthropic/v1/messages` and `/messages/count_tokens`, the same
under DMR's OpenAI prefixes (`/engines/llama.cpp/v1`, `/engines/v1`, `/v1`), and the model list
under `/anthropic/v1/models`.

Requests are translated to llama-server's OpenAI chat API (translate.py) and go through the
common hot path (upstream.py: Assign -> Worker.Generate); answers and streams are translated
back (answers.py, stream.py). `anthropic-version`, `anthropic-beta` and `x-api-key` headers are
accepted and ignored. Every error leaves in Anthropic's shape (errors.py).

count_tokens asks llama-server itself: the worker forwards only chat/completions/embeddings, so
the count is a one-token chat completion of the same rendered prompt, whose `usage.prompt_tokens`
is the number of tokens the model's tokenizer made of it (chat template included), exactly what
`/v1/messages` reports as its input for the same request. It costs one prompt evaluation, which
also warms llama-server's prompt cache for the request that usually follows.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from modelrunner.v1 import common_pb2
from services.gateway import errors
from services.gateway.anthropic import answers
from services.gateway.anthropic.errors import REQUEST_ID_HEADERS, error_response
from services.gateway.anthropic.exchange import Exchange
from services.gateway.anthropic.models import (
    CountTokensRequest,
    MessagesRequest,
    parse_count_tokens,
    parse_messages,
)
from services.gateway.anthropic.stream import MessageStream
from services.gateway.anthropic.translate import (
    Translation,
    chat_request,
    count_tokens_request,
    has_images,
)
from services.gateway.bodies import read_json
from services.gateway.context import GatewayContext
from services.gateway.hints import routing_hints
from services.gateway.inference import InferenceRequest, request_id_from
from services.gateway.openai.routes import PREFIXES as OPENAI_PREFIXES
from services.gateway.openapi_bodies import STREAM_TYPES, json_body, model_schema
from services.gateway.upstream import call_json, open_events

__all__ = ["PREFIXES", "build_router"]

_log = logging.getLogger(__name__)

PREFIXES = ("/anthropic/v1", *OPENAI_PREFIXES)

# DMR's media type for a multimodal projector layer; without one llama-server cannot see images.
_MMPROJ_MEDIA_TYPE = "application/vnd.docker.ai.mmproj"
_CHAT = common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _headers(request_id: str, worker_id: str = "") -> dict[str, str]:
    headers = dict.fromkeys(REQUEST_ID_HEADERS, request_id)
    if worker_id:
        headers["X-Worker-Id"] = worker_id
    return headers


def _json(data: Any, request_id: str) -> Response:
    return Response(orjson.dumps(data), media_type="application/json", headers=_headers(request_id))


def _rfc3339(unix_seconds: int) -> str:
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _anthropic_model(model: common_pb2.Model) -> dict[str, Any]:
    name = model.tags[0] if model.tags else model.id
    return {
        "type": "model",
        "id": name,
        "display_name": name,
        "created_at": _rfc3339(model.created),
    }


def build_router(context: GatewayContext) -> APIRouter:
    router = APIRouter()

    def inference_request(
        request: Request, request_id: str, model: str, body: dict[str, Any], *, stream: bool
    ) -> InferenceRequest:
        return InferenceRequest(
            request_id=request_id,
            endpoint=_CHAT,
            model=model,
            stream=stream,
            body=orjson.dumps(body),
            hints=routing_hints(request.headers, body, _CHAT, context.settings),
        )

    async def check_images(parsed: CountTokensRequest) -> None:
        if not has_images(parsed):
            return
        with errors.translate_rpc_errors("registry"):
            model = await context.registry.inspect_model(parsed.model)
        if not any(layer.media_type == _MMPROJ_MEDIA_TYPE for layer in model.layers):
            raise errors.InvalidRequest(
                f"model {parsed.model} cannot read images: it has no multimodal projector "
                "(mmproj); send text only, or use a vision model",
                param="messages",
            )

    async def stream_answer(
        stack: contextlib.AsyncExitStack,
        upstream: InferenceRequest,
        translation: Translation,
        model: str,
    ) -> Response:
        answer = await stack.enter_async_context(open_events(context.inference, upstream))
        machine = MessageStream(
            translation,
            model=model,
            message_id=answers.message_id(),
            max_buffer=context.settings.max_response_bytes,
        )

        async def events() -> AsyncGenerator[bytes, None]:
            try:
                async for chunk in answer.events():
                    if out := machine.feed(chunk):
                        yield out
            except errors.GatewayError as err:
                _log.warning(
                    "request %s: stream failed after the head: %s",
                    upstream.request_id,
                    err.message,
                )
                yield machine.fail(err)
                return
            yield machine.finish()

        body = events()
        # Closed before the upstream answer (the stack is last in, first out), even when the
        # response never started iterating it.
        stack.push_async_callback(body.aclose)
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-cache",
                **_headers(upstream.request_id, answer.worker_id),
            },
        )

    async def messages(request: Request) -> Response:
        request_id = request_id_from(request.headers)
        try:
            parsed = parse_messages(await read_json(request, context.settings.max_body_bytes))
            translation = chat_request(parsed)
            upstream = inference_request(
                request, request_id, parsed.model, translation.body, stream=parsed.stream
            )
        except errors.GatewayError as err:
            return error_response(err, request_id)

        async def produce(stack: contextlib.AsyncExitStack) -> Response:
            await check_images(parsed)
            if parsed.stream:
                return await stream_answer(stack, upstream, translation, parsed.model)
            completion = await call_json(context.inference, upstream)
            message = answers.to_message(
                completion, translation, model=parsed.model, message_id=answers.message_id()
            )
            return _json(message, request_id)

        return Exchange(produce, request_id)

    async def count_tokens(request: Request) -> Response:
        request_id = request_id_from(request.headers)
        try:
            parsed = parse_count_tokens(await read_json(request, context.settings.max_body_bytes))
            body = count_tokens_request(parsed)
            upstream = inference_request(request, request_id, parsed.model, body, stream=False)
        except errors.GatewayError as err:
            return error_response(err, request_id)

        async def produce(stack: contextlib.AsyncExitStack) -> Response:
            await check_images(parsed)
            completion = await call_json(context.inference, upstream)
            return _json({"input_tokens": _prompt_tokens(completion)}, request_id)

        return Exchange(produce, request_id)

    async def list_models(request: Request) -> Response:
        request_id = request_id_from(request.headers)
        try:
            with errors.translate_rpc_errors("registry"):
                models = await context.registry.list_models()
        except errors.GatewayError as err:
            return error_response(err, request_id)
        data = [_anthropic_model(model) for model in models]
        return _json(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
            request_id,
        )

    # `model_id` as a parameter so that the OpenAPI document declares it.
    async def get_model(model_id: str, request: Request) -> Response:
        request_id = request_id_from(request.headers)
        try:
            with errors.translate_rpc_errors("registry"):
                model = await context.registry.inspect_model(model_id)
        except errors.GatewayError as err:
            return error_response(err, request_id)
        return _json(_anthropic_model(model), request_id)

    async def unknown(request: Request) -> Response:
        return error_response(
            errors.NotFound(f"no such endpoint: {request.method} {request.url.path}"),
            request_id_from(request.headers),
        )

    for prefix in PREFIXES:
        documented = prefix == PREFIXES[0]
        router.add_api_route(
            prefix + "/messages",
            messages,
            methods=["POST"],
            include_in_schema=documented,
            openapi_extra=json_body(model_schema(MessagesRequest), answers=STREAM_TYPES),
        )
        router.add_api_route(
            prefix + "/messages/count_tokens",
            count_tokens,
            methods=["POST"],
            include_in_schema=documented,
            openapi_extra=json_body(model_schema(CountTokensRequest)),
        )
    router.add_api_route("/anthropic/v1/models", list_models, methods=["GET"])
    router.add_api_route("/anthropic/v1/models/{model_id:path}", get_model, methods=["GET"])
    router.add_api_route(
        "/anthropic/{rest:path}", unknown, methods=_ALL_METHODS, include_in_schema=False
    )
    return router


def _prompt_tokens(completion: Mapping[str, Any]) -> int:
    usage = completion.get("usage")
    count = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    if not isinstance(count, int) or count < 0:
        raise errors.UpstreamError("llama-server's answer has no usage.prompt_tokens to count")
    return count
