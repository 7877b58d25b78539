"""What the HTTP layer and the inference path share about one request, for its metrics.

The middleware (middleware.py) opens an `Exchange` when a request arrives and labels the
request's series with it when the answer is done; `Inference` fills in the model the scheduler
resolved, deep inside whichever route served it. A context variable carries it between the two,
as `services.common.request_id` carries the request id: the route's tasks copy the context, so
they all see the same `Exchange`. Its value belongs to each request's context, never to the module.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Exchange", "current_exchange", "exchange_scope"]


@dataclass(slots=True)
class Exchange:
    """One request; mutable, and only ever touched by that request's tasks."""

    # Monotonic seconds at arrival: time to first token counts from here.
    started: float
    # The canonical reference the scheduler resolved; "" until (unless) it does.
    model: str = ""


_EXCHANGE: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar(
    "modelrunner_gateway_exchange", default=None
)


def current_exchange() -> Exchange | None:
    return _EXCHANGE.get()


@contextlib.contextmanager
def exchange_scope(exchange: Exchange) -> Iterator[Exchange]:
    token = _EXCHANGE.set(exchange)
    try:
        yield exchange
    finally:
        _EXCHANGE.reset(token)
