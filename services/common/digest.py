"""OCI digests: validated before they become file names (no path traversal through a digest)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["InvalidDigest", "blob_path", "parse_digest", "sha256_digest", "sha256_file"]

_ENCODED_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^(sha256|sha512):([a-f0-9]+)$")
_HASH_CHUNK = 1 << 20


class InvalidDigest(ValueError):
    """Not an `algorithm:hex` digest this project accepts."""


def parse_digest(digest: str) -> tuple[str, str]:
    """Split and validate a digest; returns (algorithm, hex)."""
    match = _DIGEST.match(digest)
    if match is None or len(match.group(2)) != _ENCODED_LENGTH[match.group(1)]:
        raise InvalidDigest(f"invalid digest {digest[:80]!r}: expected sha256:<64 hex>")
    return match.group(1), match.group(2)


def blob_path(root: Path, digest: str) -> Path:
    """`root/blobs/<alg>/<hex>` for a validated digest."""
    algorithm, encoded = parse_digest(digest)
    return root / "blobs" / algorithm / encoded


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hash a file in chunks; call through asyncio.to_thread from async code."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()
