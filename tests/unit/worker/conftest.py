"""Worker test fixtures: the stand-in llama-server, short runtime dirs, in-memory model blobs."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.worker.pool import RunnerPool
from tests.unit.worker.support import FAKE_SERVER, FakeBlobs, make_pool


@pytest.fixture(scope="session")
def fake_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable that runs the stand-in with this interpreter."""
    path = tmp_path_factory.mktemp("bin") / "llama-server"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """Short on purpose: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mrw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def blobs(tmp_path: Path) -> FakeBlobs:
    return FakeBlobs(tmp_path)


@pytest.fixture
async def pool(fake_binary: Path, runtime_dir: Path, blobs: FakeBlobs) -> AsyncIterator[RunnerPool]:
    running = make_pool(fake_binary, runtime_dir, blobs)
    yield running
    await running.close()
