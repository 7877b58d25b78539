"""Ollama's API under /api, so Ollama clients (the `ollama` SDKs and CLI, Open WebUI, LangChain's
ChatOllama, ...) work unchanged against the gateway.

    GET    /api/version      {"version"}: the Ollama release whose API this follows
    GET    /api/tags         the local models (views.py)
    POST   /api/show         one model: details, GGUF model_info, template, capabilities
    GET    /api/ps           loaded runners: size, size_vram (0 on CPU), expires_at
    POST   /api/chat         NDJSON stream by default; `stream: false` for one object
    POST   /api/generate     the same, `prompt` (+ `system`) or a `raw` prompt
    POST   /api/embed        `input` string or list -> `embeddings`
    POST   /api/embeddings   legacy: `prompt` -> `embedding`
    POST   /api/pull         registry pull, Ollama's progress lines (transfers.py)
    POST   /api/push         registry push, likewise
    DELETE /api/delete       {model}: untag, or delete with the last tag (then unload it)
    POST   /api/copy         {source, destination}: a new tag for the same model

`/api/create` and `/api/blobs` (building a model from a Modelfile) are 501: DMR packages models
with `POST /models/package` instead. Errors everywhere under /api are `{"error": "..."}` with
the HTTP status (errors.py).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from services.common.clock import Clock, SystemClock
from services.gateway import errors
from services.gateway.bodies import read_body_model
from services.gateway.context import GatewayContext
from services.gateway.ollama.errors import OllamaRoute
from services.gateway.ollama.generation import Generation
from services.gateway.ollama.models import (
    ChatRequest,
    CopyRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ModelRequest,
    TransferRequest,
)
from services.gateway.ollama.transfers import transfer
from services.gateway.ollama.views import ps_view, show_view, tags_view
from services.gateway.openapi_bodies import UPSTREAM_UNREACHABLE, json_body, model_schema
from services.gateway.responses import json_response

__all__ = ["OLLAMA_API_VERSION", "build_router"]

_log = logging.getLogger(__name__)

_LINES = ("application/json", "application/x-ndjson")

# Clients gate features on it (tools streamed whole, `think`, JSON-schema `format`, tool call
# ids and logprobs are all in the API of this release).
OLLAMA_API_VERSION = "0.12.0"


def _required(name: str) -> str:
    if not name:
        raise errors.InvalidRequest("model is required", param="model")
    return name


def build_router(context: GatewayContext, *, clock: Clock | None = None) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=OllamaRoute)
    generation = Generation(context, clock or SystemClock())
    transfer_body = json_body(
        model_schema(TransferRequest), answers=_LINES, failures=UPSTREAM_UNREACHABLE
    )
    limit = context.settings.max_body_bytes

    @router.get("/version")
    async def version() -> Response:
        return json_response({"version": OLLAMA_API_VERSION})

    @router.get("/tags")
    async def tags() -> Response:
        with errors.translate_rpc_errors("registry"):
            models = await context.registry.list_models()
        return json_response(tags_view(models))

    @router.post("/show", openapi_extra=json_body(model_schema(ModelRequest)))
    async def show(request: Request) -> Response:
        body = await read_body_model(request, ModelRequest, limit)
        name = _required(body.model_name)
        with errors.translate_rpc_errors("registry"):
            model = await context.registry.inspect_model(name)
        return json_response(show_view(model, name))

    @router.get("/ps")
    async def ps() -> Response:
        placements, models = await asyncio.gather(
            context.scheduler.list_placements(),
            context.registry.list_models(),
            return_exceptions=True,
        )
        if isinstance(placements, grpc.aio.AioRpcError):
            raise errors.from_rpc_error(placements, errors.RpcStep.MANAGEMENT, what="scheduler")
        if isinstance(placements, BaseException):
            raise placements
        if isinstance(models, BaseException):
            # The runners are what ps is about; without the registry they only lack details.
            _log.warning("/api/ps without model details: %s", models)
            models = []
        return json_response(ps_view(placements, models))

    @router.post("/chat", openapi_extra=json_body(model_schema(ChatRequest), answers=_LINES))
    async def chat(request: Request) -> Response:
        return await generation.chat(request)

    @router.post(
        "/generate", openapi_extra=json_body(model_schema(GenerateRequest), answers=_LINES)
    )
    async def generate(request: Request) -> Response:
        return await generation.generate(request)

    @router.post("/embed", openapi_extra=json_body(model_schema(EmbedRequest)))
    async def embed(request: Request) -> Response:
        return await generation.embed(request)

    @router.post("/embeddings", openapi_extra=json_body(model_schema(EmbeddingsRequest)))
    async def embeddings(request: Request) -> Response:
        return await generation.embeddings(request)

    @router.post("/pull", openapi_extra=transfer_body)
    async def pull(request: Request) -> Response:
        return await transfer(request, context, "pull")

    @router.post("/push", openapi_extra=transfer_body)
    async def push(request: Request) -> Response:
        return await transfer(request, context, "push")

    @router.delete("/delete", openapi_extra=json_body(model_schema(ModelRequest)))
    async def delete(request: Request) -> Response:
        body = await read_body_model(request, ModelRequest, limit)
        name = _required(body.model_name)
        # Several tags: only this one goes (Ollama's delete of a name); the last tag takes the
        # model with it, and then its runners are unloaded too, as in DMR.
        with errors.translate_rpc_errors("registry", precondition=errors.Conflict):
            reply = await context.registry.delete_model(name, force=False)
        await context.scheduler.unload_deleted(list(reply.deleted))
        return Response(status_code=200)

    @router.post("/copy", openapi_extra=json_body(model_schema(CopyRequest)))
    async def copy(request: Request) -> Response:
        body = await read_body_model(request, CopyRequest, limit)
        with errors.translate_rpc_errors("registry"):
            await context.registry.tag_model(body.source.strip(), body.destination.strip())
        return Response(status_code=200)

    @router.post("/create", responses={501: {"description": "not supported"}})
    async def create() -> Response:
        raise errors.Unimplemented(
            "/api/create is not supported: package a GGUF with POST /models/package "
            "(docker model package)"
        )

    @router.api_route(
        "/blobs/{digest}",
        methods=["HEAD", "POST"],
        responses={501: {"description": "not supported"}},
    )
    async def blobs(digest: str) -> Response:
        raise errors.Unimplemented(
            "/api/blobs is not supported: package a GGUF with POST /models/package"
        )

    @router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    async def unknown(rest: str, request: Request) -> Response:
        raise errors.NotFound(f"no such endpoint: {request.method} /api/{rest}")

    return router
