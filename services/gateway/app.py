"""The FastAPI application factory."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from services.common.clock import Clock
from services.common.grpc_client import open_channel
from services.gateway import errors
from services.gateway.anthropic import routes as anthropic_routes
from services.gateway.config import GatewaySettings
from services.gateway.context import GatewayContext
from services.gateway.cors import CorsGuard, OriginPolicy
from services.gateway.dmr import routes as dmr_routes
from services.gateway.inference import REQUEST_ID_HEADER
from services.gateway.metrics import routes as metrics_routes
from services.gateway.ollama import routes as ollama_routes
from services.gateway.openai import responses as responses_routes
from services.gateway.openai import routes as openai_routes
from services.gateway.responses import error_response

__all__ = ["create_app", "package_version"]

_DISTRIBUTION = "model-runner"


def package_version() -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def create_app(
    settings: GatewaySettings,
    *,
    clock: Clock | None = None,
    connect: Callable[[str], grpc.aio.Channel] = open_channel,
) -> FastAPI:
    """Build the gateway; its lifespan opens the gRPC channels and closes them on shutdown."""
    context = GatewayContext(settings, version=package_version(), clock=clock, connect=connect)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await context.start()
        try:
            yield
        finally:
            await context.stop()

    app = FastAPI(
        title="Model Runner gateway",
        version=context.version,
        lifespan=lifespan,
        # The gateway serves DMR's API; its own docs pages would shadow nothing but are noise.
        docs_url=None,
        redoc_url=None,
    )
    # The Responses and Anthropic routes sit under the OpenAI prefixes; they come first so that
    # the OpenAI router's catch-all for unknown /v1 paths does not shadow them.
    app.include_router(responses_routes.build_router(context))
    app.include_router(anthropic_routes.build_router(context))
    app.include_router(openai_routes.build_router(context))
    app.include_router(dmr_routes.build_router(context))
    app.include_router(ollama_routes.build_router(context))
    if settings.metrics_enabled:
        app.include_router(metrics_routes.build_router(context))
    _install_error_handlers(app)
    app.add_middleware(CorsGuard, policy=OriginPolicy(settings.cors_origins))
    return app


def _request_id(request: Request) -> str | None:
    return request.headers.get(REQUEST_ID_HEADER)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, whoever raises it, leaves in OpenAI's shape."""

    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.GatewayError)
        return error_response(exc, _request_id(request))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err = errors.GatewayError(str(exc.detail), headers=dict(exc.headers or {}))
        err.status_code = exc.status_code
        err.error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(err, _request_id(request))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return error_response(errors.InvalidRequest(message), _request_id(request))

    app.add_exception_handler(errors.GatewayError, gateway_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
