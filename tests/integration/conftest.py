"""Fixtures that run the real chain: the local stack (registry, scheduler, worker, gateway as
processes), real llama-server and the real SmolLM2 GGUF, on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from services.stack.config import StackSettings
from services.stack.launcher import LocalStack
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = "ai/smollm2"

StackFactory = Callable[..., AbstractAsyncContextManager[LocalStack]]


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    path = Path(
        os.environ.get(
            "MODEL_RUNNER_TEST_GGUF", ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    )
    if not path.is_file():
        pytest.fail(f"SmolLM2 GGUF not found at {path}: run `make model` (make test does)")
    return path.resolve()


@pytest.fixture(scope="session")
def worker_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared across stacks so the 98 MB blob is fetched from the registry once per session."""
    return tmp_path_factory.mktemp("worker-cache")


@pytest.fixture(scope="session")
def stack_factory(
    tmp_path_factory: pytest.TempPathFactory, gguf_path: Path, worker_cache: Path
) -> StackFactory:
    """Start a whole stack with extra environment, with or without the bundled model in its
    store; it is stopped (by PID) when the block exits."""

    @asynccontextmanager
    async def start(
        env: Mapping[str, str] | None = None, *, bundled: bool = True
    ) -> AsyncIterator[LocalStack]:
        root = tmp_path_factory.mktemp("stack")
        environ = {
            **os.environ,
            "MODEL_RUNNER_PORT": str(free_port()),
            "REGISTRY_ADDRESS": f"127.0.0.1:{free_port()}",
            "SCHEDULER_ADDRESS": f"127.0.0.1:{free_port()}",
            "WORKER_ADVERTISE_ADDRESS": f"127.0.0.1:{free_port()}",
            "MODELS_PATH": str(root / "models"),
            "WORKER_CACHE_PATH": str(worker_cache),
            "MODEL_RUNNER_LOG_DIR": str(root / "logs"),
            "SCHEDULER_STATE_PATH": str(root / "scheduler" / "model-configs.json"),
            # Short leases keep dead-worker tests quick; keep-alive stays long unless a test asks.
            "SCHEDULER_HEARTBEAT_INTERVAL": "0.5s",
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        settings = StackSettings.from_env(environ)
        assert settings.bundled_model == BUNDLED_MODEL
        async with LocalStack(settings, environ, gguf_path if bundled else None) as stack:
            yield stack

    return start


@pytest.fixture(scope="module")
async def stack(stack_factory: StackFactory) -> AsyncIterator[LocalStack]:
    """One stack per test module."""
    async with stack_factory() as running:
        yield running
