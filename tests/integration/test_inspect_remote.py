"""DMR's remote inspect (`GET /models/{name}?remote=true`) through the real stack against a real
registry (CNCF distribution): the model is described from the registry without being pulled, and
describes exactly what a pull then stores."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import StackFactory
from tests.integration.registry.conftest import running_registry
from tests.unit.registry.conftest import stored_files

pytestmark = pytest.mark.integration


def _error(response: httpx.Response) -> dict[str, object]:
    error = response.json()["error"]
    assert error["code"] == response.status_code
    return dict(error)


async def test_remote_inspect_describes_the_pushed_model_without_pulling_it(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    with running_registry(tmp_path / "oci") as registry:
        remote = f"{registry.host}/team/smollm2"
        async with stack_factory() as stack:
            store = stack.settings.models_path
            async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
                local = (await http.get("/models/ai/smollm2")).json()
                tagged = await http.post(
                    "/models/ai/smollm2/tag", params={"repo": remote, "tag": "v1"}
                )
                assert tagged.status_code == 201, tagged.text
                pushed = await http.post(f"/models/{remote}:v1/push")
                assert pushed.status_code == 200, pushed.text
                assert '"success"' in pushed.text.splitlines()[-1], pushed.text
                # Empty the store, so only the registry holds the model.
                deleted = await http.delete(f"/models/{local['id']}", params={"force": "true"})
                assert deleted.status_code == 200, deleted.text
                assert (await http.get("/models")).json() == []
                blobs_before = stored_files(store)

                described = await http.get(f"/models/{remote}:v1", params={"remote": "true"})
                assert described.status_code == 200, described.text
                view = described.json()
                assert view == {**local, "tags": []}
                assert view["config"]["architecture"] == "llama"
                by_digest = await http.get(f"/models/{remote}@{local['id']}", params={"remote": 1})
                assert by_digest.json() == view

                # Nothing was pulled: no model, no blob, no partial file.
                assert (await http.get("/models")).json() == []
                assert stored_files(store) == blobs_before
                local_miss = await http.get(f"/models/{remote}:v1")
                assert local_miss.status_code == 404

                unknown_tag = await http.get(f"/models/{remote}:nope", params={"remote": "true"})
                assert unknown_tag.status_code == 404, unknown_tag.text
                assert _error(unknown_tag)["type"] == "not_found_error"
                unknown_repo = await http.get(
                    f"/models/{registry.host}/team/none:v1", params={"remote": "true"}
                )
                assert unknown_repo.status_code == 404, unknown_repo.text
                bad = await http.get("/models/Team/Model:v1", params={"remote": "true"})
                assert bad.status_code == 400, bad.text
                assert _error(bad)["type"] == "invalid_request_error"

                # What a pull then stores is what the remote inspect described.
                pulled = await http.post("/models/create", json={"from": f"{remote}:v1"})
                assert pulled.status_code == 200, pulled.text
                after = (await http.get(f"/models/{remote}:v1")).json()
                assert after == {**view, "tags": [f"{remote}:v1"]}
