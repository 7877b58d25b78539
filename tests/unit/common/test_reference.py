from __future__ import annotations

import pytest

from services.common.reference import InvalidReference, is_model_id, parse_reference

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "familiar", "qualified"),
    [
        ("smollm2", "ai/smollm2:latest", "index.docker.io/ai/smollm2:latest"),
        ("  smollm2  ", "ai/smollm2:latest", "index.docker.io/ai/smollm2:latest"),
        ("ai/smollm2", "ai/smollm2:latest", "index.docker.io/ai/smollm2:latest"),
        ("ai/smollm2:135M-Q4_1", "ai/smollm2:135M-Q4_1", "index.docker.io/ai/smollm2:135M-Q4_1"),
        ("docker.io/ai/smollm2", "ai/smollm2:latest", "index.docker.io/ai/smollm2:latest"),
        ("myorg/model:v2", "myorg/model:v2", "index.docker.io/myorg/model:v2"),
        ("localhost:5000/team/model:v1", "localhost:5000/team/model:v1", None),
        ("localhost/model", "localhost/model:latest", None),
        ("registry.example.com/a/b/c", "registry.example.com/a/b/c:latest", None),
        ("hf.co/org/repo:Q4_K_M", "huggingface.co/org/repo:Q4_K_M", None),
        (
            f"ai/smollm2@sha256:{HEX}",
            f"ai/smollm2@sha256:{HEX}",
            f"index.docker.io/ai/smollm2@sha256:{HEX}",
        ),
    ],
)
def test_normalizes_like_dmr(text: str, familiar: str, qualified: str | None) -> None:
    reference = parse_reference(text)
    assert reference.familiar == familiar
    assert str(reference) == familiar
    assert reference.qualified == (qualified or familiar)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../etc/passwd", "invalid"),
        ("ai/../x", "invalid repository name"),
        ("SmolLM2", "lower-case"),
        ("ai/Model:v1", "lower-case"),
        ("a" * 400, "too long"),
        ("ai/" + "b" * 260, "longer than"),
        ("smollm2:", "invalid tag"),
        ("smollm2:bad/tag", "invalid"),
        ("smollm2:-x", "invalid tag"),
        ("a//b", "invalid repository name"),
        ("ai/x@sha256:1234", "invalid digest"),
        ("ai/x@md5:" + HEX, "invalid digest"),
        ("ai/x y", "invalid repository name"),
    ],
)
def test_rejects_malformed_references(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_reference(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"sha256:{HEX}", True),
        (HEX, True),
        ("0123456789ab", True),
        ("0123456789a", False),
        ("smollm2", False),
        ("sha256:xyz", False),
    ],
)
def test_model_ids(text: str, expected: bool) -> None:
    assert is_model_id(text) is expected
