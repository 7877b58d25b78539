"""`model-cli verify` against a fake gateway: the report rendered, and the exit code scripts use."""

from __future__ import annotations

from typing import Any

import httpx

from tests.unit.cli.conftest import FakeGateway, Invoke

LAYER = "sha256:" + "ab" * 32
CONFIG = "sha256:" + "cd" * 32


def _report(**blob: Any) -> dict[str, Any]:
    blobs = [
        {"digest": CONFIG, "size": 500, "status": "ok", "models": ["ai/tiny:latest"], "detail": ""},
        {"digest": LAYER, "size": 98_000_000, "status": "ok", "models": ["ai/tiny:latest"],
         "detail": "", **blob},
    ]  # fmt: skip
    counts = {
        status: sum(1 for b in blobs if b["status"] == status)
        for status in ("ok", "corrupt", "missing")
    }
    return {
        "healthy": counts["ok"] == 2,
        "models": 1,
        "bytes_checked": 98_000_500,
        "blobs": blobs,
        **counts,
    }


def test_a_healthy_store_exits_zero(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.json("POST", "/models/verify", _report())
    result = invoke("verify")
    assert result.code == 0, result
    assert result.stdout == "Verified 2 blob(s) of 1 model(s), 98MB read: all ok\n"
    assert len(gateway.sent("POST", "/models/verify")) == 1


def test_a_corrupt_blob_is_listed_with_its_models_and_exits_one(
    gateway: FakeGateway, invoke: Invoke
) -> None:
    gateway.json(
        "POST", "/models/verify", _report(status="corrupt", detail="content hashes to sha256:00")
    )
    result = invoke("verify")
    assert result.code == 1
    assert result.stderr == "Error: the store has 1 corrupt and 0 missing blob(s)\n"
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["BLOB", "STATUS", "SIZE", "MODELS", "DETAIL"]
    assert rows[1].split() == [
        "abababababab", "corrupt", "98MB", "ai/tiny:latest", "content", "hashes", "to", "sha256:00",
    ]  # fmt: skip
    assert len(rows) == 3
    assert "cdcdcdcdcdcd" not in result.stdout


def test_json_prints_the_report_and_still_fails_on_damage(
    gateway: FakeGateway, invoke: Invoke
) -> None:
    report = _report(status="missing", detail="not in the store")
    gateway.json("POST", "/models/verify", report)
    result = invoke("verify", "--json")
    assert result.code == 1
    assert result.json() == report


def test_the_verify_timeout_applies_not_the_short_one(gateway: FakeGateway, invoke: Invoke) -> None:
    seen: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=_report())

    gateway.route("POST", "/models/verify", answer)
    assert invoke("verify", env={"MODEL_CLI_VERIFY_TIMEOUT": "2h"}).code == 0
    assert seen[0]["read"] == 7200.0


def test_a_gateway_error_is_one_line(gateway: FakeGateway, invoke: Invoke) -> None:
    gateway.error("POST", "/models/verify", 500, "registry: index.json is not valid JSON")
    result = invoke("verify")
    assert result.code == 1
    assert result.stderr == "Error: registry: index.json is not valid JSON\n"
