"""DMR's pull and push through the gateway, against a real registry (CNCF distribution): package
in one stack, push, pull into a second stack whose store is empty, and serve the pulled model."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.conftest import StackFactory
from tests.integration.registry.conftest import running_registry

pytestmark = pytest.mark.integration


def _lines(response: httpx.Response) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in response.text.splitlines() if line.strip()]


async def test_push_then_pull_into_an_empty_store_and_serve(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    with running_registry(tmp_path / "oci") as registry:
        remote = f"{registry.host}/team/smollm2"
        async with stack_factory() as source:
            async with httpx.AsyncClient(base_url=source.gateway_url, timeout=120) as http:
                tagged = await http.post(
                    "/models/ai/smollm2/tag", params={"repo": remote, "tag": "v1"}
                )
                assert tagged.status_code == 201, tagged.text
                pushed = await http.post(f"/models/{remote}:v1/push")
                assert pushed.status_code == 200, pushed.text
                lines = _lines(pushed)
                assert lines[-1]["type"] == "success", lines[-1]
                assert all(line["mode"] == "push" for line in lines)

        async with stack_factory(bundled=False) as target:
            async with httpx.AsyncClient(base_url=target.gateway_url, timeout=120) as http:
                assert (await http.get("/models")).json() == []
                pulled = await http.post(
                    "/models/create",
                    json={"from": f"{remote}:v1"},
                    headers={"Accept": "application/json"},
                )
                assert pulled.status_code == 200, pulled.text
                lines = _lines(pulled)
                progress = [line for line in lines if line["type"] == "progress"]
                assert progress, lines
                currents = [int(line["layer"]["current"]) for line in progress]  # type: ignore[index]
                assert currents == sorted(currents)
                assert lines[-1]["type"] == "success", lines[-1]

                models = (await http.get("/models")).json()
                assert [m["tags"] for m in models] == [[f"{remote}:v1"]]
                assert models[0]["config"]["architecture"] == "llama"

                again = await http.post("/models/create", json={"from": f"{remote}:v1"})
                assert _lines(again)[-1]["message"].startswith("Using cached model")  # type: ignore[union-attr]

                reply = await http.post(
                    "/v1/chat/completions",
                    json={
                        "model": f"{remote}:v1",
                        "messages": [{"role": "user", "content": "Hello"}],
                        "max_tokens": 8,
                        "temperature": 0,
                    },
                )
                assert reply.status_code == 200, reply.text
                assert reply.json()["choices"][0]["message"]["content"]


async def test_pull_errors_get_their_status(stack_factory: StackFactory, tmp_path: Path) -> None:
    with running_registry(tmp_path / "oci") as registry:
        async with stack_factory(bundled=False) as stack:
            async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as http:
                unknown = await http.post(
                    "/models/create", json={"from": f"{registry.host}/team/none:v1"}
                )
                assert unknown.status_code == 404, unknown.text
                unreachable = await http.post(
                    "/models/create", json={"from": "127.0.0.1:1/team/none:v1"}
                )
                assert unreachable.status_code == 503, unreachable.text
                malformed = await http.post("/models/create", json={"from": "Team/../x"})
                assert malformed.status_code == 400, malformed.text
                # Nothing landed.
                assert (await http.get("/models")).json() == []
