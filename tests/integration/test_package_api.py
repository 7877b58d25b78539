"""Packaging over the API and purge, through the real stack: the SmolLM2 GGUF streamed into an
empty store through the gateway, served, refused when it is not a GGUF, and purged."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

TAG = "myorg/uploaded:v1"
CHUNK = 256 * 1024


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(handle.read, CHUNK):
            yield data
    finally:
        handle.close()


def _store_files(models: Path) -> list[str]:
    """Blobs and upload leftovers: nothing once the store is empty again."""
    found = [p for p in (models / "blobs").rglob("*") if p.is_file()]
    uploads = models / ".uploads"
    if uploads.exists():
        found.extend(p for p in uploads.rglob("*") if p.is_file())
    return sorted(str(p.relative_to(models)) for p in found)


async def test_package_upload_serve_refuse_and_purge(
    stack_factory: StackFactory, gguf_path: Path, tmp_path: Path
) -> None:
    async with stack_factory(bundled=False) as stack:
        models_path = Path(stack.settings.models_path)
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
            assert (await http.get("/models")).json() == []

            not_gguf = await http.post(
                "/models/package",
                params={"tag": "myorg/bad:v1"},
                headers={"Content-Type": "application/octet-stream"},
                content=_file_chunks(Path(__file__)),
            )
            assert not_gguf.status_code == 400, not_gguf.text
            assert "not a GGUF" in not_gguf.json()["error"]["message"]
            assert (await http.get("/models")).json() == []
            assert _store_files(models_path) == []

            size = (await asyncio.to_thread(gguf_path.stat)).st_size
            uploaded = await http.post(
                "/models/package",
                params={"tag": TAG, "context_size": "4096", "filename": gguf_path.name},
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                    "X-Model-License": base64.b64encode(b"Apache-2.0\n").decode(),
                },
                content=_file_chunks(gguf_path),
            )
            assert uploaded.status_code == 201, uploaded.text
            model = uploaded.json()
            assert model["tags"] == [TAG]

            listed = (await http.get("/models")).json()
            assert [m["tags"] for m in listed] == [[TAG]]
            config = listed[0]["config"]
            assert config["quantization"] == "Q4_1"
            assert config["architecture"] == "llama"
            assert config["context_size"] == 4096
            assert listed[0]["id"] == model["id"]

            reply = await http.post(
                "/v1/chat/completions",
                json={
                    "model": TAG,
                    "messages": [{"role": "user", "content": "Hello"}],
                    "max_tokens": 8,
                    "temperature": 0,
                },
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"]

            purged = await http.delete("/models/purge")
            assert purged.status_code == 200, purged.text
            assert purged.json()["deleted_models"] == 1
            assert purged.json()["deleted_blobs"] == 4
            assert (await http.get("/models")).json() == []
            assert _store_files(models_path) == []
