"""Decoding the JSON documents the store reads (manifests, configs, index.json): every failure,
including nesting deep enough to exhaust the parser's recursion, is a StoreCorrupt."""

from __future__ import annotations

import json
from typing import Any

from services.registry.errors import StoreCorrupt

__all__ = ["load_json"]


def load_json(data: bytes, what: str) -> Any:
    """`what` names the document in the error ("manifest", "model config", a path)."""
    try:
        return json.loads(data)
    except RecursionError:
        # `[[[[...` a few thousand deep: json raises RecursionError, not ValueError.
        raise StoreCorrupt(f"{what} is nested too deeply to be valid") from None
    except ValueError as exc:
        raise StoreCorrupt(f"{what} is not valid JSON: {exc}") from exc
