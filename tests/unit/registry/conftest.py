"""Fixtures for the registry's unit tests: a fresh store per test, real GGUF files to package."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from services.common.clock import SystemClock
from services.common.reference import DEFAULT_REGISTRY
from services.registry.model_store import ModelStore
from services.registry.packaging import Packager

_DEFAULT_GGUF = (
    Path(__file__).resolve().parents[3] / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
)


def smollm2_path() -> Path:
    """The real SmolLM2 GGUF (MODEL_RUNNER_TEST_GGUF, else the Makefile's download location)."""
    path = Path(os.environ.get("MODEL_RUNNER_TEST_GGUF") or _DEFAULT_GGUF)
    if not path.is_file():
        pytest.skip(f"SmolLM2 GGUF not found at {path}; run `make model`")
    return path


def write_tiny_gguf(path: Path, *, seed: float = 0.0, context_length: int = 2048) -> Path:
    """A small but genuine GGUF v3 file (llama architecture, two F32 tensors)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(context_length)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_array("test.small", [1, 2, 3])
    writer.add_array("test.big", list(range(51)))
    writer.add_array("test.names", ["a", "b"])
    writer.add_bool("test.flag", True)
    writer.add_float32("test.ratio", 0.5)
    writer.add_string("tokenizer.chat_template", "<|im_start|>{{ content }} & more")
    writer.add_tensor("weight", np.full((4, 8), seed, dtype=np.float32))
    writer.add_tensor("bias", np.zeros((8,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


TinyFactory = Callable[..., Path]


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> TinyFactory:
    """Writes tiny GGUF files under the test's tmp dir: `tiny_gguf("a.gguf", seed=1.0)`."""
    sources = tmp_path / "sources"
    sources.mkdir()

    def make(name: str = "tiny.gguf", *, seed: float = 0.0, context_length: int = 2048) -> Path:
        return write_tiny_gguf(sources / name, seed=seed, context_length=context_length)

    return make


async def open_store(root: Path, *, default_registry: str = DEFAULT_REGISTRY) -> ModelStore:
    store = ModelStore.open(
        root,
        io_chunk_bytes=64 * 1024,
        max_metadata_bytes=1 << 20,
        default_registry=default_registry,
    )
    await store.initialize(clock=SystemClock(), incomplete_max_age=7 * 24 * 3600)
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ModelStore]:
    yield await open_store(tmp_path / "models")


@pytest.fixture
def packager(store: ModelStore) -> Packager:
    return Packager(store, max_text_file_bytes=1 << 20)


def stored_files(root: Path) -> list[str]:
    """Every file under the store's blobs/ (partials included), relative to it."""
    blobs = root / "blobs"
    return sorted(str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file())
