"""Property tests for model references: whatever the text, parsing either yields a safe, normalized
reference or raises InvalidReference, and normalizing is a fixed point."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.common.reference import (
    DEFAULT_REGISTRY,
    InvalidReference,
    ModelReference,
    is_model_id,
    parse_reference,
)

# The distribution grammar, ASCII only: what every parsed reference's parts must match in full.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)*(?::[0-9]{1,5})?", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}", re.ASCII)

_LOWER = string.ascii_lowercase + string.digits


@st.composite
def components(draw: st.DrawFn) -> str:
    """One path component: alphanumeric runs joined by the grammar's separators."""
    parts = draw(st.lists(st.text(_LOWER, min_size=1, max_size=6), min_size=1, max_size=3))
    text = parts[0]
    for part in parts[1:]:
        text += draw(st.sampled_from([".", "_", "__", "-", "--"])) + part
    return text


hosts = st.one_of(
    st.just("localhost"),
    st.builds(lambda a, b: f"{a}.{b}", st.text(_LOWER, min_size=1, max_size=8), st.sampled_from(["com", "io", "example"])),
    st.builds(lambda a, port: f"{a}:{port}", st.sampled_from(["localhost", "registry.test", "127.0.0.1"]), st.integers(1, 65535)),
)  # fmt: skip
tags = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda hex_: f"sha256:{hex_}")


@st.composite
def reference_texts(draw: st.DrawFn) -> str:
    """Texts the grammar accepts, in every spelling users type (host or not, tag, digest)."""
    path = draw(st.lists(components(), min_size=1, max_size=3))
    host = draw(st.one_of(st.none(), hosts, st.sampled_from(["docker.io", "hf.co", "HF.CO"])))
    if host is None and len(path) > 1 and (("." in path[0]) or path[0] == "localhost"):
        # By the grammar such a first component is a host; that spelling is drawn above.
        path[0] = path[0].replace(".", "-").replace("localhost", "local-host")
    text = "/".join(path) if host is None else f"{host}/{'/'.join(path)}"
    if draw(st.booleans()):
        text += ":" + draw(tags)
    if draw(st.booleans()):
        text += "@" + draw(digests)
    return text


def _assert_safe(reference: ModelReference) -> None:
    parts = reference.repository.split("/")
    assert all(_COMPONENT.fullmatch(part) for part in parts), reference
    # Never a path that climbs out of, or jumps outside, a directory built from it.
    assert ".." not in parts and "." not in parts and not reference.repository.startswith("/")
    assert _HOST.fullmatch(reference.registry), reference
    if reference.tag:
        assert _TAG.fullmatch(reference.tag), reference
    if reference.digest:
        assert _DIGEST.fullmatch(reference.digest), reference
    assert reference.tag or reference.digest
    for shown in (reference.familiar, reference.qualified):
        assert shown.isprintable() and not any(char.isspace() for char in shown)


@settings(max_examples=400)
@given(st.text(max_size=300))
@example("ai/x\n:tag")
@example("host.com\n/x")
@example("ai/x:v1\n@sha256:" + "a" * 64)
@example("registry.test:٣٣/x")
@example("ai/x:ñ")
@example("../../etc/passwd")
@example("/abs/path")
def test_any_text_parses_safely_or_raises_invalid_reference(text: str) -> None:
    try:
        reference = parse_reference(text)
    except InvalidReference:
        return
    _assert_safe(reference)


@settings(max_examples=300)
@given(reference_texts())
@example("docker.io/a.b/c")
@example("docker.io/localhost/c")
@example("HF.CO/org/repo")
def test_valid_references_parse_and_normalizing_is_a_fixed_point(text: str) -> None:
    reference = parse_reference(text)
    _assert_safe(reference)
    for shown in (reference.familiar, reference.qualified):
        again = parse_reference(shown)
        assert again.familiar == reference.familiar
        assert again.qualified == reference.qualified
        if not (reference.digest and text.partition("@")[0].rfind(":") > text.rfind("/")):
            # A tag next to a digest is dropped from the display form (the digest wins).
            assert again == reference


@given(reference_texts())
def test_default_registry_names_get_the_default_namespace_only_when_bare(text: str) -> None:
    reference = parse_reference(text)
    if reference.registry == DEFAULT_REGISTRY:
        assert "/" in reference.repository


@settings(max_examples=300)
@given(st.text(max_size=200))
@example("a" * 12 + "\n")
@example("٣" * 12)
def test_is_model_id_never_raises_and_accepts_only_hex_ids(text: str) -> None:
    if is_model_id(text):
        value = text.strip()
        assert re.fullmatch(r"(sha256:)?([a-f0-9]{12}|[a-f0-9]{64})", value, re.ASCII)


@pytest.mark.parametrize(
    "text",
    ["ai/x\n:tag", "host.com\n/x", "ai/x:v1\n@sha256:" + "a" * 64, "registry.test:٣٣/x", "ai/x:ñ"],
)
def test_non_ascii_and_embedded_newlines_are_refused(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)
