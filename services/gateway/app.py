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

from services.common.clock import Clock, SystemClock
from services.gateway import errors
from services.gateway.anthropic import errors as anthropic_errors
from services.gateway.anthropic import routes as anthropic_routes
from services.gateway.auth import ApiKeys, AuthGuard
from services.gateway.config import GatewaySettings
from services.gateway.context import GatewayContext
from services.gateway.cors import CorsGuard, OriginPolicy
from services.gateway.dmr import routes as dmr_routes
from services.gateway.inference import REQUEST_ID_HEADER
from services.gateway.metrics import routes as metrics_routes
from services.gateway.metrics.families import GatewayMetrics
from services.gateway.metrics.middleware import HttpMetrics
from services.gateway.ollama import errors as ollama_errors
from services.gateway.ollama import routes as ollama_routes
from services.gateway.openai import responses as responses_routes
from services.gateway.openai import routes as openai_routes
from services.gateway.rate_limit import RateLimiter, RateLimits
from services.gateway.request_ids import RequestIds
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
    connect: Callable[[str], grpc.aio.Channel] | None = None,
) -> FastAPI:
    """Build the gateway; its lifespan opens the gRPC channels and closes them on shutdown."""
    # The app's own registry (never prometheus_client's global one); none when metrics are off.
    metrics = GatewayMetrics() if settings.metrics_enabled else None
    context = GatewayContext(
        settings, version=package_version(), clock=clock, connect=connect, metrics=metrics
    )

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
    # Inside CORS: a browser can read the 401/429 (it carries Allow-Origin) and its preflight
    # never reaches the key check.
    limits = RateLimits(
        settings.rate_limit_rpm, settings.rate_limit_tpm, settings.rate_limit_max_clients
    )
    if settings.api_keys or limits.enabled:
        app.add_middleware(
            AuthGuard,
            keys=ApiKeys(settings.api_keys),
            limiter=RateLimiter(limits, clock or SystemClock()),
            exempt_paths=settings.auth_exempt_paths,
        )
    # DMR: no CORS on the Unix socket, which no browser can reach.
    if settings.socket_path is None:
        app.add_middleware(CorsGuard, policy=OriginPolicy(settings.cors_origins))
    if metrics is not None:
        app.add_middleware(HttpMetrics, metrics=metrics, clock=clock or SystemClock())
    # Added last, so it runs first: every other layer, metrics and CORS included, sees the id.
    app.add_middleware(RequestIds)
    return app


def _dialect_error(request: Request, err: errors.GatewayError) -> Response:
    """Routing's own errors (405, 404, a bad path parameter) in the shape of the API the path
    belongs to, as the routes answer theirs: Ollama's under /api, Anthropic's for Messages."""
    path = request.url.path
    request_id = request.headers.get(REQUEST_ID_HEADER)
    if path == "/api" or path.startswith("/api/"):
        return ollama_errors.error_response(err, request_id)
    if path.startswith("/anthropic/") or path.endswith(("/messages", "/messages/count_tokens")):
        return anthropic_errors.error_response(err, request_id)
    return error_response(err)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, whoever raises it, leaves in OpenAI's shape."""

    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.GatewayError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err = errors.GatewayError(str(exc.detail), headers=dict(exc.headers or {}))
        err.status_code = exc.status_code
        err.error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _dialect_error(request, err)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return _dialect_error(request, errors.InvalidRequest(message))

    app.add_exception_handler(errors.GatewayError, gateway_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
