"""The gateway's own Prometheus metrics (`modelrunner_gateway_*`), in a registry of the app's own.

`create_app` builds one `GatewayMetrics` per app (never prometheus_client's global registry) and
hands it to the HTTP middleware (middleware.py) and to `Inference` (via the context), which records
what each stream shows (meter.py). Labels are bounded: `route` is the route template (e.g.
`/engines/{backend}/v1/chat/completions`, or `unmatched`), `model` the canonical reference the
scheduler resolved (`ai/smollm2:latest`, bounded by the store) or "" before or without one, and
`status` the HTTP status; never a raw path, model name as typed, or request id.

    modelrunner_gateway_requests_total{route,model,status}       answered HTTP requests
    modelrunner_gateway_request_duration_seconds{route,model}    arrival to the last byte sent
    modelrunner_gateway_requests_in_flight{route}                requests being served
    modelrunner_gateway_time_to_first_token_seconds{model}       arrival to the first streamed chunk
    modelrunner_gateway_inter_token_latency_seconds{model}       gap between streamed chunks
    modelrunner_gateway_prompt_tokens_total{model}               `usage.prompt_tokens` of answers
    modelrunner_gateway_completion_tokens_total{model}           `usage.completion_tokens`
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

__all__ = ["INTER_TOKEN_BUCKETS", "GatewayMetrics"]

_PREFIX = "modelrunner_gateway_"
# Seconds between two streamed tokens: a GPU's few milliseconds up to a CPU stalled by a batch.
INTER_TOKEN_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1),
    *(0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0),
)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            f"{_PREFIX}requests",
            "HTTP requests answered, by route template, resolved model and status.",
            ("route", "model", "status"),
            registry=self.registry,
        )
        self.request_duration = Histogram(
            f"{_PREFIX}request_duration_seconds",
            "End-to-end latency: the request's arrival to the last byte of its answer.",
            ("route", "model"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            f"{_PREFIX}requests_in_flight",
            "HTTP requests being served, by route template.",
            ("route",),
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            f"{_PREFIX}time_to_first_token_seconds",
            "Streamed answers: the request's arrival to the first chunk from the engine.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            f"{_PREFIX}inter_token_latency_seconds",
            "Streamed answers: the time between two chunks (tokens) from the engine.",
            ("model",),
            buckets=INTER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            f"{_PREFIX}prompt_tokens",
            "Prompt tokens of the answers, as the engine's usage reported them.",
            ("model",),
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            f"{_PREFIX}completion_tokens",
            "Generated tokens of the answers, as the engine's usage reported them.",
            ("model",),
            registry=self.registry,
        )
