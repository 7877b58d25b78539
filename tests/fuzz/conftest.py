"""The fuzz tests run the real stack, with the integration tests' fixtures."""

from __future__ import annotations

from tests.integration.conftest import gguf_path, stack_factory, worker_cache

__all__ = ["gguf_path", "stack_factory", "worker_cache"]
