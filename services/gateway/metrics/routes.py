"""`GET /metrics` (GET only), registered unless DISABLE_METRICS is set, as in DMR.

One page for the whole deployment: the gateway's own series (families.py) first, then every READY
runner's llama-server metrics, labelled by model and worker (collect.py). The two never share a
family name (`modelrunner_gateway_*` against llama.cpp's `llamacpp:*`), so the page stays valid
text format 0.0.4 with one HELP/TYPE per family.
"""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client.exposition import generate_latest
from starlette.responses import PlainTextResponse, Response

from services.gateway import errors
from services.gateway.context import GatewayContext
from services.gateway.metrics.aggregate import CONTENT_TYPE
from services.gateway.metrics.collect import MetricsCollector

__all__ = ["build_router"]


def build_router(context: GatewayContext) -> APIRouter:
    router = APIRouter()

    # Documents the Prometheus text format; the handler builds its Response itself.
    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        collector = MetricsCollector(
            context.scheduler, context.workers, timeout=context.settings.metrics_timeout
        )
        with errors.translate_rpc_errors("scheduler"):
            text = await collector.render()
        own = generate_latest(context.metrics.registry) if context.metrics is not None else b""
        return Response(own + text.encode(), media_type=CONTENT_TYPE)

    return router
