"""The Responses API's memory: finished responses by id, for retrieve, input_items, delete and
`previous_response_id`, bounded in count and bytes, least recently used evicted first.

Each entry keeps the whole conversation that led to it (`history`: the items before its own input,
flattened), so a chain keeps working when an older link is evicted or deleted, and each entry's
size accounts for everything it holds. The items are shared between entries, not copied, so the
real footprint is below the accounted one. Entries and their dicts are never mutated once stored.

One store per gateway app (built by the Responses router), used from the event loop only: no
method awaits, so no lock is needed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ResponseStore", "StoredResponse"]

_log = logging.getLogger(__name__)

Item = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: Mapping[str, Any]
    # This request's input items, as GET .../input_items lists them.
    input_items: tuple[Item, ...]
    # The conversation before `input_items` (from previous_response_id), oldest first.
    history: tuple[Item, ...]
    size: int

    @classmethod
    def create(
        cls, response: Mapping[str, Any], input_items: tuple[Item, ...], history: tuple[Item, ...]
    ) -> StoredResponse:
        size = len(orjson.dumps([response, input_items, history]))
        return cls(response, input_items, history, size)

    @property
    def response_id(self) -> str:
        return str(self.response["id"])

    def conversation(self) -> tuple[Item, ...]:
        """What a follow-up with `previous_response_id` continues: history, input, output."""
        return (*self.history, *self.input_items, *self.response.get("output", ()))


class ResponseStore:
    """At most `max_entries` responses and `max_bytes` of them; the least recently used go."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, entry: StoredResponse) -> bool:
        """Store (or replace) `entry`; False when storing is off (no entries allowed) or the entry
        alone is over the byte bound."""
        if self._max_entries <= 0:
            return False
        if entry.size > self._max_bytes:
            _log.warning(
                "response %s (%d bytes) not stored: over GATEWAY_RESPONSES_MAX_STORED_BYTES (%d)",
                entry.response_id,
                entry.size,
                self._max_bytes,
            )
            return False
        self.delete(entry.response_id)
        self._entries[entry.response_id] = entry
        self._bytes += entry.size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True
