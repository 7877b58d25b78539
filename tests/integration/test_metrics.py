"""`GET /metrics` over the real chain: real llama-server's counters, labelled by the gateway.
Tests run in file order: the first one sees no runner."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.stack.launcher import LocalStack

pytestmark = pytest.mark.integration

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def test_no_runner_yet(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    # The gateway's own series come first (test_prometheus.py), then the runners' part.
    assert response.text.endswith("\n# No active runners\n")
    assert "llamacpp:" not in response.text


async def test_llama_server_counters_after_one_chat(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=300) as http:
        chat = await http.post(
            "/engines/llama.cpp/v1/chat/completions",
            json={
                "model": "ai/smollm2",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "temperature": 0.0,
            },
        )
        assert chat.status_code == 200, chat.text
        usage = chat.json()["usage"]
        [placement] = (await http.get("/engines/ps")).json()
        response = await http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    labels = {
        "backend": "llama.cpp",
        "model": "ai/smollm2:latest",
        "mode": "completion",
        "worker": placement["worker_id"],
    }
    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    prompt = samples["llamacpp:prompt_tokens_total"]
    predicted = samples["llamacpp:tokens_predicted_total"]
    assert prompt.labels == labels and predicted.labels == labels
    # The first request of a fresh runner: nothing was cached, every prompt token counted.
    assert prompt.value == usage["prompt_tokens"]
    assert predicted.value >= usage["completion_tokens"] >= 1
    # One HELP/TYPE per family, and llama.cpp's counter without `_total` keeps its name.
    assert response.text.count("# TYPE llamacpp:prompt_tokens_total counter\n") == 1
    assert "\nllamacpp:n_tokens_max{" in response.text
