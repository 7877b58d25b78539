"""`GET /metrics` (GET only), registered unless DISABLE_METRICS is set, as in DMR."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from services.gateway import errors
from services.gateway.context import GatewayContext
from services.gateway.metrics.aggregate import CONTENT_TYPE
from services.gateway.metrics.collect import MetricsCollector

__all__ = ["build_router"]


def build_router(context: GatewayContext) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics")
    async def metrics() -> Response:
        collector = MetricsCollector(
            context.scheduler, context.workers, timeout=context.settings.metrics_timeout
        )
        with errors.translate_rpc_errors("scheduler"):
            text = await collector.render()
        return Response(text.encode(), media_type=CONTENT_TYPE)

    return router
