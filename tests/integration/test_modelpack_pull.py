"""A CNCF ModelPack v1 artifact (not DMR's format) uploaded to a real registry by plain HTTP, as
another tool would publish it, then pulled through the gateway into an empty store and served:
its config is read in DMR's shape and the worker finds the GGUF by the layer's file path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import orjson
import pytest

from services.common.digest import sha256_file
from tests.integration.conftest import StackFactory
from tests.integration.registry.conftest import running_registry
from tests.unit.registry.conftest import smollm2_path

pytestmark = pytest.mark.integration

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT_MEDIA_TYPE = "application/vnd.cncf.model.weight.v1.raw"
_CHUNK = 1024 * 1024


def _upload_blob(
    http: httpx.Client, repository: str, digest: str, path_or_data: Path | bytes
) -> None:
    """The distribution spec's monolithic upload: POST for a session, PUT the bytes."""
    started = http.post(f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    if isinstance(path_or_data, bytes):
        content: bytes | object = path_or_data
        size = len(path_or_data)
    else:
        size = path_or_data.stat().st_size

        def chunks(path: Path = path_or_data) -> object:
            with path.open("rb") as handle:
                while data := handle.read(_CHUNK):
                    yield data

        content = chunks()
    # The session URL carries its own query (upload state): add the digest to it, not over it.
    separator = "&" if "?" in location else "?"
    done = http.put(
        f"{location}{separator}digest={digest}",
        content=content,  # type: ignore[arg-type]
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
    )
    assert done.status_code == 201, done.text


def _publish_modelpack(registry_host: str, repository: str, tag: str, gguf: Path) -> str:
    weights_digest = sha256_file(gguf)
    config = orjson.dumps(
        {
            "descriptor": {
                "createdAt": "2025-06-01T12:00:00Z",
                "name": "smollm2",
                "family": "llama",
            },
            "config": {
                "architecture": "llama",
                "format": "gguf",
                "paramSize": "135M",
                "quantization": "Q4_1",
            },
            "modelfs": {"type": "layers", "diffIds": [weights_digest]},
        }
    )
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": WEIGHT_MEDIA_TYPE,
                    "digest": weights_digest,
                    "size": gguf.stat().st_size,
                    "annotations": {
                        "org.cncf.model.filepath": "weights/smollm2-q4_1.gguf",
                        "org.cncf.model.file.mediatype.untested": "false",
                    },
                }
            ],
        }
    ).encode()
    with httpx.Client(base_url=f"http://{registry_host}", timeout=60) as http:
        _upload_blob(http, repository, weights_digest, gguf)
        _upload_blob(http, repository, config_digest, config)
        put = http.put(
            f"/v2/{repository}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": MANIFEST_MEDIA_TYPE},
        )
        assert put.status_code == 201, put.text
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


async def test_modelpack_artifact_is_pulled_and_served(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    with running_registry(tmp_path / "oci") as registry:
        reference = f"{registry.host}/team/modelpack:v1"
        manifest_digest = _publish_modelpack(registry.host, "team/modelpack", "v1", smollm2_path())

        async with stack_factory(bundled=False) as stack:
            async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
                pulled = await http.post("/models/create", json={"from": reference})
                assert pulled.status_code == 200, pulled.text
                lines = [orjson.loads(line) for line in pulled.text.splitlines() if line.strip()]
                assert lines[-1]["type"] == "success", lines[-1]

                (model,) = (await http.get("/models")).json()
                assert model["tags"] == [reference]
                assert model["id"] == manifest_digest
                assert model["config"]["format"] == "gguf"
                assert model["config"]["architecture"] == "llama"
                assert model["config"]["quantization"] == "Q4_1"

                reply = await http.post(
                    "/v1/chat/completions",
                    json={
                        "model": reference,
                        "messages": [{"role": "user", "content": "Hello"}],
                        "max_tokens": 8,
                        "temperature": 0,
                        "seed": 7,
                    },
                )
                assert reply.status_code == 200, reply.text
                assert reply.json()["choices"][0]["message"]["content"]
