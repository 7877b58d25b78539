"""OpenAI routes under DMR's three prefixes: /engines/llama.cpp/v1, /engines/v1 and /v1.

Request and response bodies are llama-server's own OpenAI dialect, so nothing is translated: the
handler reads the body, learns `model` and `stream`, computes the routing hints from the same
parse (hints.py), and hands the original bytes to the hot path. The one exception is a chat body
whose `tool_choice` is an object, which llama-server would silently read as "auto": it is
rewritten into the equivalent narrowed tools + "required" (tool_choice.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from modelrunner.v1 import common_pb2
from services.gateway import errors
from services.gateway.bodies import read_body
from services.gateway.context import GatewayContext
from services.gateway.hints import routing_hints
from services.gateway.inference import InferenceRequest, parse_envelope, request_id_from
from services.gateway.models_view import BACKEND_NAME, openai_model, openai_model_list
from services.gateway.openai.tool_choice import rewrite_chat_tool_choice
from services.gateway.openapi_bodies import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    EMBEDDINGS,
    STREAM_TYPES,
    json_body,
)
from services.gateway.relay import InferenceResponse
from services.gateway.responses import error_response, json_response

__all__ = ["PREFIXES", "PRELOAD_HEADER", "build_router"]

PREFIXES = (f"/engines/{BACKEND_NAME}/v1", "/engines/v1", "/v1")

# DMR: load the model, answer 200 with no body, run no inference (`docker model run` warms up).
PRELOAD_HEADER = "x-preload-only"

_ENDPOINTS: dict[str, common_pb2.EndpointKind.ValueType] = {
    "/chat/completions": common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS,
    "/completions": common_pb2.ENDPOINT_KIND_COMPLETIONS,
    "/embeddings": common_pb2.ENDPOINT_KIND_EMBEDDINGS,
}

_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# Documentation only: the handlers read the raw body (openapi_bodies.py).
_BODIES = {
    "/chat/completions": json_body(CHAT_COMPLETIONS, answers=STREAM_TYPES),
    "/completions": json_body(COMPLETIONS, answers=STREAM_TYPES),
    "/embeddings": json_body(EMBEDDINGS),
}


def build_router(context: GatewayContext) -> APIRouter:
    router = APIRouter()

    def inference_endpoint(
        endpoint: common_pb2.EndpointKind.ValueType,
    ) -> Callable[[Request], Awaitable[Response]]:
        async def infer(request: Request) -> Response:
            request_id = request_id_from(request.headers)
            try:
                body = await read_body(request, context.settings.max_body_bytes)
                envelope = parse_envelope(body)
                payload = envelope.payload
                if endpoint == common_pb2.ENDPOINT_KIND_CHAT_COMPLETIONS:
                    rewritten = rewrite_chat_tool_choice(payload)
                    if rewritten is not None:
                        payload, body = rewritten, orjson.dumps(rewritten)
                hints = routing_hints(request.headers, payload, endpoint, context.settings)
            except errors.GatewayError as err:
                return error_response(err, request_id)
            inference_request = InferenceRequest(
                request_id=request_id,
                endpoint=endpoint,
                model=envelope.model,
                stream=envelope.stream,
                body=body,
                hints=hints,
            )
            if request.headers.get(PRELOAD_HEADER, "").strip().lower() == "true":
                return await _preload(inference_request)
            return InferenceResponse(context.inference, inference_request)

        return infer

    async def _preload(inference_request: InferenceRequest) -> Response:
        try:
            await context.inference.preload(inference_request)
        except errors.GatewayError as err:
            return error_response(err, inference_request.request_id)
        return Response(headers={"X-Request-ID": inference_request.request_id})

    async def list_models() -> Response:
        with errors.translate_rpc_errors("registry"):
            models = await context.registry.list_models()
        return json_response(openai_model_list(models))

    async def get_model(name: str) -> Response:
        with errors.translate_rpc_errors("registry"):
            model = await context.registry.inspect_model(name)
        return json_response(openai_model(model))

    async def unknown_backend(backend: str, rest: str) -> Response:
        if backend == BACKEND_NAME:
            raise errors.NotFound(f"no such endpoint: /v1/{rest}")
        raise errors.NotFound(f"backend not found: {backend}", param="backend")

    for prefix in PREFIXES:
        documented = prefix == PREFIXES[0]
        for suffix, endpoint in _ENDPOINTS.items():
            router.add_api_route(
                prefix + suffix,
                inference_endpoint(endpoint),
                methods=["POST"],
                include_in_schema=documented,
                name=f"{prefix}{suffix}",
                openapi_extra=_BODIES[suffix],
            )
        router.add_api_route(
            prefix + "/models", list_models, methods=["GET"], include_in_schema=documented
        )
        router.add_api_route(
            prefix + "/models/{name:path}",
            get_model,
            methods=["GET"],
            include_in_schema=documented,
        )
    router.add_api_route(
        "/engines/{backend}/v1/{rest:path}",
        unknown_backend,
        methods=_ALL_METHODS,
        include_in_schema=False,
    )
    return router
