"""Pins keep blobs that an in-progress write has not yet referenced from index.json safe from GC.

A writer pins each digest before it checks for or writes the blob and keeps the pin until the index
references it; the garbage collector skips pinned digests, and checks the pin while holding the
digest's lock, so it can never delete a blob a writer has just found present.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

__all__ = ["PinSession", "Pins"]


class PinSession:
    """The digests one writer holds; released together when its `with` block ends."""

    def __init__(self, pins: Pins) -> None:
        self._pins = pins
        self._held: list[str] = []

    def add(self, digest: str) -> None:
        self._pins._counts[digest] += 1
        self._held.append(digest)

    def _release(self) -> None:
        for digest in self._held:
            self._pins._counts[digest] -= 1
            if self._pins._counts[digest] <= 0:
                del self._pins._counts[digest]
        self._held.clear()


class Pins:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def is_pinned(self, digest: str) -> bool:
        return self._counts.get(digest, 0) > 0

    @contextlib.contextmanager
    def session(self) -> Iterator[PinSession]:
        session = PinSession(self)
        try:
            yield session
        finally:
            session._release()
