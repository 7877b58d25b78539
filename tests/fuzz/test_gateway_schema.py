"""Schemathesis against the real stack: every operation of the gateway's own OpenAPI document gets
generated requests, valid and invalid, over real HTTP (uvicorn, limits and streams as deployed),
with the real llama-server and SmolLM2 behind it.

Each answer must be no 5xx (other than one the document declares for the operation), arrive
within RESPONSE_BOUND seconds (no hang), carry a documented content type where the document names
them, and, for a 4xx, be an error with a message in the dialect's shape.
Afterwards the stack must still serve: the gateway answers, a chat completion works, the bundled
model is still listed and its blobs verify, and the worker runs one llama-server at most.

`DELETE /models/purge` would empty the store under every later case, so the generated run leaves
it out and test_purge_leaves_a_consistent_store covers it at the end.

FUZZ_MAX_EXAMPLES (default 25) sets the examples per operation and FUZZ_SUMMARY a path where the
per-operation counts of cases and statuses are written as JSON (the figures of
docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.hooks import HookContext
from schemathesis.specs.openapi.checks import content_type_conformance

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.stack.launcher import LocalStack
from tests.integration.conftest import BUNDLED_MODEL, StackFactory
from tests.support.processes import child_pids

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Seconds within which every generated request must be answered in full.
RESPONSE_BOUND = 60.0
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
# Keeps every generated completion short whatever max_tokens the case asks for.
MAX_TOKENS = 8
PURGE = "/models/purge"


def _document() -> dict[str, Any]:
    """The document the gateway serves (test_served_document_is_the_fuzzed_one checks it), built
    at collection so that each operation is its own test."""
    with warnings.catch_warnings():
        # FastAPI warns about the duplicate operation ids of multi-method catch-all routes.
        warnings.simplefilter("ignore")
        return create_app(GatewaySettings.from_env({})).openapi()


_CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 1,
        "request-timeout": RESPONSE_BOUND,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES},
    }
)
schema = schemathesis.openapi.from_dict(_document(), config=_CONFIG).exclude(
    method="DELETE", path=PURGE
)
# Most generated bodies name the bundled model (Ollama's wire types make `model` optional, so it
# is often absent), so that they reach llama-server rather than stopping at "model is required"
# or "model not found". Only inference routes: a
# management route given the real model (delete, configure) would change what later cases meet.
INFERENCE_PATHS = frozenset(
    {
        "/engines/llama.cpp/v1/chat/completions",
        "/engines/llama.cpp/v1/completions",
        "/engines/llama.cpp/v1/embeddings",
        "/engines/llama.cpp/v1/responses",
        "/anthropic/v1/messages",
        "/anthropic/v1/messages/count_tokens",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
    }
)


@schema.hook("flatmap_body")
def _mostly_the_bundled_model(context: HookContext, body: Any) -> st.SearchStrategy[Any]:
    if context.operation is None or context.operation.path not in INFERENCE_PATHS:
        return st.just(body)
    if not isinstance(body, dict):
        return st.just(body)
    # Hypothesis favours the first choice; the generated name still comes up.
    return st.sampled_from([{**body, "model": BUNDLED_MODEL}, body])


@dataclass
class Tally:
    """Cases, status classes and statuses seen per operation (owned by one fixture)."""

    statuses: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def record(self, operation: str, status: int) -> None:
        counts = self.statuses[operation]
        counts["cases"] += 1
        counts[f"{status // 100}xx"] += 1
        counts[str(status)] += 1

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: dict(sorted(counts.items())) for name, counts in sorted(self.statuses.items())
        }


@pytest.fixture(scope="module")
async def fuzz_stack(stack_factory: StackFactory) -> AsyncIterator[LocalStack]:
    async with stack_factory({"GATEWAY_MAX_TOKENS": str(MAX_TOKENS)}) as running:
        yield running


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    counts = Tally()
    yield counts
    summary = counts.summary()
    target = os.environ.get("FUZZ_SUMMARY")
    if target:
        Path(target).write_text(json.dumps(summary, indent=2) + "\n")


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (path, method): {key: value for key, value in operation.items() if key != "operationId"}
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def _error_message(path: str, body: Any) -> Any:
    """The message of an error body in the shape of the route's dialect; None when misshapen."""
    if not isinstance(body, dict):
        return None
    if path.startswith("/api/"):
        return body.get("error")
    error = body.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("type"), str):
        return None
    if path.startswith("/anthropic/") and body.get("type") != "error":
        return None
    return error.get("message")


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    max_examples=MAX_EXAMPLES,
    derandomize=True,
)
def test_generated_requests_get_no_5xx_and_no_hang(
    case: schemathesis.Case[Any], fuzz_stack: LocalStack, tally: Tally
) -> None:
    started = time.monotonic()
    response = case.call(base_url=fuzz_stack.gateway_url, timeout=RESPONSE_BOUND)
    elapsed = time.monotonic() - started
    tally.record(case.operation.label, response.status_code)
    # A 5xx passes only where the document declares it (a route this gateway does not offer,
    # an upstream registry out of reach): anything else is a bug.
    declared = str(response.status_code) in case.operation.definition.raw.get("responses", {})
    checks = [content_type_conformance]
    if not declared:
        checks.append(not_a_server_error)
    case.validate_response(response, checks=checks)
    assert elapsed < RESPONSE_BOUND, f"{case.operation.label} took {elapsed:.1f}s"
    if 400 <= response.status_code < 500 and case.method != "HEAD":
        message = _error_message(case.path, response.json())
        assert isinstance(message, str) and message, (
            f"{case.operation.label} answered {response.status_code} without a clear error: "
            f"{response.text[:300]}"
        )


async def test_served_document_is_the_fuzzed_one(fuzz_stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=fuzz_stack.gateway_url, timeout=10.0) as client:
        served = await client.get("/openapi.json")
    assert served.status_code == 200
    # Operation ids of multi-method routes vary with set order; the operations themselves not.
    assert _operations(served.json()) == _operations(_document())


async def test_stack_still_serves_after_fuzzing(fuzz_stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=fuzz_stack.gateway_url, timeout=60.0) as client:
        root = await client.get("/")
        assert root.status_code == 200
        listed = (await client.get("/models")).json()
        assert any(f"{BUNDLED_MODEL}:latest" in model["tags"] for model in listed)
        chat = await client.post(
            "/engines/v1/chat/completions",
            json={
                "model": BUNDLED_MODEL,
                "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 4,
            },
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] is not None
        verify = await client.post("/models/verify")
        assert verify.status_code == 200, verify.text
    for service in fuzz_stack.services:
        assert service.exit_reason() is None, f"{service.name} exited"
    # One runner for the one model: nothing the fuzzing started was orphaned.
    worker = fuzz_stack.worker.pid
    assert worker is not None
    assert len(child_pids(worker)) <= 1


async def test_purge_leaves_a_consistent_store(fuzz_stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=fuzz_stack.gateway_url, timeout=60.0) as client:
        purged = await client.delete(PURGE)
        assert purged.status_code in (200, 409), purged.text
        if purged.status_code == 409:
            assert purged.json()["error"]["message"]
            return
        assert (await client.get("/models")).json() == []
        verify = await client.post("/models/verify")
        assert verify.status_code == 200, verify.text
        # A runner loaded before the purge may still answer (purge, like DELETE /models/{name},
        # leaves runners to their keep-alive); either way the answer is no server error.
        after = await client.post(
            "/engines/v1/chat/completions",
            json={"model": BUNDLED_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert after.status_code in (200, 404), after.text
