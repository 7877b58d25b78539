"""Per-request HTTP metrics as pure ASGI: requests by route, model and status, end-to-end latency,
and requests in flight.

The route label is the template of the route that served the request, which the router records in
the scope (`scope["route"]`) when it matches; it is known once the route runs, which is when the
request is first counted in flight: the route's first read of the body or its answer's start,
whichever comes first. Routing itself takes microseconds, so nothing worth counting is missed,
and the middleware never repeats the router's matching. A request no route matched is `unmatched`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.clock import Clock
from services.gateway.metrics.exchange import Exchange, exchange_scope
from services.gateway.metrics.families import GatewayMetrics

__all__ = ["UNMATCHED_ROUTE", "HttpMetrics", "route_template"]

UNMATCHED_ROUTE = "unmatched"
# The client went away before any answer was sent (nginx's "client closed request").
_CLIENT_CLOSED = "499"


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class HttpMetrics:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, clock: Clock) -> None:
        self._app = app
        self._metrics = metrics
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        metrics = self._metrics
        exchange = Exchange(started=self._clock.monotonic())
        route: str | None = None
        status = _CLIENT_CLOSED

        def routed() -> None:
            nonlocal route
            if route is None:
                route = route_template(scope)
                metrics.in_flight.labels(route).inc()

        async def counted_receive() -> Message:
            routed()
            return await receive()

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                routed()
                status = str(message["status"])
            await send(message)

        try:
            with exchange_scope(exchange):
                await self._app(scope, counted_receive, counted_send)
        except Exception:
            # A cancellation (the client left) keeps 499; anything else became a 500 outside.
            if status == _CLIENT_CLOSED:
                status = "500"
            raise
        finally:
            if route is None:
                route = route_template(scope)
            else:
                metrics.in_flight.labels(route).dec()
            metrics.requests.labels(route, exchange.model, status).inc()
            metrics.request_duration.labels(route, exchange.model).observe(
                self._clock.monotonic() - exchange.started
            )
