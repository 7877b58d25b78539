"""The Responses store: bounded by count and bytes, least recently used evicted first."""

from __future__ import annotations

from typing import Any

from services.gateway.openai.responses_store import ResponseStore, StoredResponse


def _message(text: str, role: str = "user") -> dict[str, Any]:
    return {"id": f"msg_{text}", "type": "message", "role": role, "content": text}


def _entry(response_id: str, text: str = "x", history: tuple[Any, ...] = ()) -> StoredResponse:
    response = {"id": response_id, "output": [_message(f"out-{text}", "assistant")]}
    return StoredResponse.create(response, (_message(text),), history)


def test_size_counts_the_response_its_input_and_its_history() -> None:
    small = _entry("resp_a", "x")
    big = _entry("resp_b", "x" * 1000)
    chained = _entry("resp_c", "x", history=big.conversation())
    assert big.size - small.size >= 2000  # the text is in the input and in the output
    assert chained.size > big.size


def test_conversation_is_history_then_input_then_output() -> None:
    first = _entry("resp_a", "one")
    second = _entry("resp_b", "two", history=first.conversation())
    assert [item["id"] for item in second.conversation()] == [
        "msg_one",
        "msg_out-one",
        "msg_two",
        "msg_out-two",
    ]


def test_the_least_recently_used_entry_goes_when_full() -> None:
    store = ResponseStore(max_entries=2, max_bytes=1 << 20)
    store.put(_entry("resp_a"))
    store.put(_entry("resp_b"))
    assert store.get("resp_a") is not None  # now b is the least recently used
    store.put(_entry("resp_c"))
    assert store.get("resp_b") is None
    assert store.get("resp_a") is not None and store.get("resp_c") is not None
    assert len(store) == 2


def test_the_byte_bound_evicts_until_the_new_entry_fits() -> None:
    entries = [_entry(f"resp_{n}", "y" * 100) for n in range(4)]
    store = ResponseStore(max_entries=100, max_bytes=entries[0].size * 2 + 10)
    for entry in entries:
        assert store.put(entry)
    assert [store.get(f"resp_{n}") is not None for n in range(4)] == [False, False, True, True]
    assert store.bytes == entries[2].size + entries[3].size


def test_an_entry_larger_than_the_whole_budget_is_not_stored() -> None:
    store = ResponseStore(max_entries=10, max_bytes=50)
    store.put(StoredResponse.create({"id": "resp_tiny"}, (), ()))
    assert not store.put(_entry("resp_big", "z" * 100))
    assert store.get("resp_big") is None
    assert store.get("resp_tiny") is not None


def test_zero_entries_turns_storing_off() -> None:
    store = ResponseStore(max_entries=0, max_bytes=1 << 20)
    assert not store.put(_entry("resp_a"))
    assert len(store) == 0


def test_delete_and_replace_keep_the_byte_count_right() -> None:
    store = ResponseStore(max_entries=10, max_bytes=1 << 20)
    first = _entry("resp_a", "short")
    store.put(first)
    replacement = _entry("resp_a", "a much longer text")
    store.put(replacement)
    assert len(store) == 1 and store.bytes == replacement.size
    assert store.delete("resp_a")
    assert not store.delete("resp_a")
    assert store.bytes == 0 and len(store) == 0


def test_a_chain_survives_the_eviction_of_its_first_link() -> None:
    store = ResponseStore(max_entries=1, max_bytes=1 << 20)
    first = _entry("resp_a", "one")
    store.put(first)
    second = _entry("resp_b", "two", history=first.conversation())
    store.put(second)
    assert store.get("resp_a") is None
    kept = store.get("resp_b")
    assert kept is not None
    assert [item["id"] for item in kept.conversation()][:2] == ["msg_one", "msg_out-one"]
