"""DMR's `/engines` management routes (scheduler and registry), plus `/engines/workers`.

GET  /engines/status                   {"llama.cpp": "Running: llama.cpp on N workers"}
GET  /engines/ps                       one row per placed runner (models_view.placement_status)
GET  /engines/df                       disk used by the store and the workers' caches
GET  /engines/workers                  every known worker: tags, memory, cache, liveness
POST /engines/unload                   {all, models, backend}
POST /engines[/llama.cpp]/_configure   a model's runtime configuration (dmr/configure.py)
GET  /engines/_configure[?model=M]     the stored configurations
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import grpc
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import errors
from services.gateway.bodies import read_body_model, read_json
from services.gateway.context import GatewayContext
from services.gateway.dmr.configure import config_entry, configure_request
from services.gateway.dmr.models import UnloadRequest
from services.gateway.models_view import (
    BACKEND_NAME,
    backend_status,
    disk_usage,
    placement_status,
    worker_status,
)
from services.gateway.openapi_bodies import CONFIGURE, json_body, model_schema
from services.gateway.responses import json_response

__all__ = ["build_router"]

_T = TypeVar("_T")


def _check_backend(backend: str) -> None:
    if backend != BACKEND_NAME:
        raise errors.NotFound(f"backend not found: {backend}", param="backend")


def _result(outcome: _T | BaseException, what: str) -> _T:
    """One result of a gather(return_exceptions=True), failures mapped as `what`'s."""
    if isinstance(outcome, grpc.aio.AioRpcError):
        raise errors.from_rpc_error(outcome, errors.RpcStep.MANAGEMENT, what=what)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def build_router(context: GatewayContext) -> APIRouter:
    router = APIRouter()

    @router.get("/engines/status")
    async def engines_status() -> Response:
        # DMR's status is a map of strings, never an error: a down scheduler is a status too.
        try:
            workers = await context.scheduler.list_workers()
        except grpc.aio.AioRpcError as exc:
            err = errors.from_rpc_error(exc, errors.RpcStep.MANAGEMENT, what="scheduler")
            return json_response({BACKEND_NAME: f"Error: {err.message}"})
        return json_response({BACKEND_NAME: backend_status(workers)})

    @router.get("/engines/ps")
    async def engines_ps() -> Response:
        with errors.translate_rpc_errors("scheduler"):
            placements = await context.scheduler.list_placements()
        return json_response([placement_status(placement) for placement in placements])

    @router.get("/engines/df")
    async def engines_df() -> Response:
        # Both asked at once; each failure is named after the service that failed.
        usage, workers = await asyncio.gather(
            context.registry.disk_usage(), context.scheduler.list_workers(), return_exceptions=True
        )
        return json_response(disk_usage(_result(usage, "registry"), _result(workers, "scheduler")))

    @router.get("/engines/workers")
    async def engines_workers() -> Response:
        with errors.translate_rpc_errors("scheduler"):
            workers = await context.scheduler.list_workers()
        return json_response([worker_status(worker) for worker in workers])

    @router.post("/engines/unload", openapi_extra=json_body(model_schema(UnloadRequest)))
    async def engines_unload(request: Request) -> Response:
        unload = await read_body_model(request, UnloadRequest, context.settings.max_body_bytes)
        if unload.backend not in ("", BACKEND_NAME):
            # Nothing runs on backends this gateway does not have.
            return json_response({"unloaded_runners": 0})
        if not unload.all and not unload.models:
            raise errors.InvalidRequest("give `all: true` or a list of `models` to unload")
        with errors.translate_rpc_errors("scheduler"):
            count = await context.scheduler.unload_models(
                unload_all=unload.all, models=unload.models
            )
        return json_response({"unloaded_runners": count})

    async def configure(request: Request) -> Response:
        payload = await read_json(request, context.settings.max_body_bytes)
        call = configure_request(payload)
        # FAILED_PRECONDITION: a runner of the model is serving requests (DMR's 409).
        with errors.translate_rpc_errors("scheduler", precondition=errors.Conflict):
            entry = await context.scheduler.configure_model(call)
        return json_response(config_entry(entry), status_code=202)

    @router.post("/engines/_configure", status_code=202, openapi_extra=json_body(CONFIGURE))
    async def configure_default(request: Request) -> Response:
        return await configure(request)

    @router.post(
        "/engines/{backend}/_configure", status_code=202, openapi_extra=json_body(CONFIGURE)
    )
    async def configure_backend(backend: str, request: Request) -> Response:
        _check_backend(backend)
        return await configure(request)

    @router.get("/engines/_configure")
    async def list_configs(request: Request) -> Response:
        model = request.query_params.get("model", "").strip()
        with errors.translate_rpc_errors("scheduler"):
            entries = await context.scheduler.list_model_configs(model)
        return json_response([config_entry(entry) for entry in entries])

    return router
