from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from modelrunner.v1 import common_pb2
from services.registry.gguf_metadata import read_gguf_info
from services.scheduler.memory import (
    MemoryEstimate,
    estimate_memory,
    format_bytes,
    model_context_limit,
    weights_bytes,
)

GGUF = "application/vnd.docker.ai.gguf.v3"
MMPROJ = "application/vnd.docker.ai.mmproj"
LICENSE = "application/vnd.docker.ai.license"
_SMOLLM2 = Path(__file__).resolve().parents[3] / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# VmRSS of the real llama-server serving SmolLM2 with --parallel 2 --ctx-size 4096 after a
# 1,580-token prompt on both slots (see the memory module's docstring).
_MEASURED_RSS_2X2048 = 246_716 * 1024


def model(
    metadata: Mapping[str, str], layers: tuple[tuple[str, int], ...] = ((GGUF, 1 << 30),)
) -> common_pb2.Model:
    return common_pb2.Model(
        id="sha256:" + "a" * 64,
        config=common_pb2.ModelConfig(format="gguf", gguf=dict(metadata)),
        layers=[common_pb2.Descriptor(media_type=t, size=size) for t, size in layers],
    )


@pytest.fixture(scope="module")
def smollm2() -> common_pb2.Model:
    """SmolLM2 as the registry describes it: the config map from the registry's own reader."""
    path = Path(os.environ.get("MODEL_RUNNER_TEST_GGUF") or _SMOLLM2)
    if not path.is_file():
        pytest.skip(f"SmolLM2 GGUF not found at {path}; run `make model`")
    info = read_gguf_info(path)
    return model(info.metadata, ((GGUF, path.stat().st_size),))


LLAMA = {
    "general.architecture": "llama",
    "llama.block_count": "4",
    "llama.context_length": "4096",
    "llama.embedding_length": "256",
    "llama.feed_forward_length": "512",
    "llama.attention.head_count": "8",
    "llama.attention.head_count_kv": "2",
    "llama.vocab_size": "1000",
}


def test_smollm2_estimate_follows_its_real_dimensions(smollm2: common_pb2.Model) -> None:
    estimate = estimate_memory(smollm2, context_size=2048, parallel=2)
    gguf = smollm2.config.gguf
    layers, kv_heads = int(gguf["llama.block_count"]), int(gguf["llama.attention.head_count_kv"])
    head_dim = int(gguf["llama.embedding_length"]) // int(gguf["llama.attention.head_count"])
    assert (layers, kv_heads, head_dim) == (30, 3, 64)
    # K and V, f16, for 2 slots of 2048 tokens: llama-server logs "KV buffer size = 90.00 MiB".
    assert estimate.kv_cache_bytes == 2 * layers * kv_heads * head_dim * 2 * 2048 * 2
    assert estimate.kv_cache_bytes == 90 << 20
    assert estimate.weights_bytes == smollm2.layers[0].size
    assert (estimate.context_size, estimate.parallel, estimate.guessed) == (2048, 2, ())
    assert estimate.total_bytes == (
        estimate.weights_bytes + estimate.kv_cache_bytes + estimate.overhead_bytes
    )


def test_smollm2_estimate_errs_high_but_within_half_again_of_measured_rss(
    smollm2: common_pb2.Model,
) -> None:
    total = estimate_memory(smollm2, context_size=2048, parallel=2).total_bytes
    assert _MEASURED_RSS_2X2048 <= total <= 1.5 * _MEASURED_RSS_2X2048


def test_training_context_of_smollm2(smollm2: common_pb2.Model) -> None:
    assert model_context_limit(smollm2) == 8192


def test_kv_cache_scales_with_slots_and_context() -> None:
    one = estimate_memory(model(LLAMA), context_size=1024, parallel=1)
    many = estimate_memory(model(LLAMA), context_size=2048, parallel=4)
    per_token = 2 * 4 * 2 * 32 * 2
    assert one.kv_cache_bytes == per_token * 1024
    assert many.kv_cache_bytes == per_token * 2048 * 4


def test_key_and_value_lengths_win_over_embedding_per_head() -> None:
    metadata = {
        **LLAMA,
        "llama.attention.key_length": "128",
        "llama.attention.value_length": "64",
    }
    estimate = estimate_memory(model(metadata), context_size=100, parallel=1)
    assert estimate.kv_cache_bytes == 4 * 2 * (128 + 64) * 2 * 100


def test_without_head_count_kv_every_head_has_its_own_kv() -> None:
    metadata = {k: v for k, v in LLAMA.items() if k != "llama.attention.head_count_kv"}
    estimate = estimate_memory(model(metadata), context_size=100, parallel=1)
    assert estimate.kv_cache_bytes == 4 * 8 * (32 + 32) * 2 * 100
    assert estimate.guessed == ()


def test_per_layer_kv_heads_are_summed() -> None:
    metadata = {**LLAMA, "llama.block_count": "3", "llama.attention.head_count_kv": "1, 2, 3"}
    estimate = estimate_memory(model(metadata), context_size=10, parallel=1)
    assert estimate.kv_cache_bytes == (1 + 2 + 3) * 64 * 2 * 10


def test_other_architecture_keys_are_read() -> None:
    metadata = {key.replace("llama", "qwen2"): value for key, value in LLAMA.items()}
    metadata["general.architecture"] = "qwen2"
    assert estimate_memory(model(metadata), context_size=10, parallel=1) == estimate_memory(
        model(LLAMA), context_size=10, parallel=1
    )
    assert model_context_limit(model(metadata)) == 4096


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"llama.block_count": "thirty"}, id="not a number"),
        pytest.param({"llama.attention.head_count": "0"}, id="zero heads"),
        pytest.param({"llama.attention.head_count_kv": "x, y"}, id="garbled array"),
        pytest.param({"llama.embedding_length": "-5"}, id="negative"),
        pytest.param({"general.architecture": ""}, id="no architecture"),
        pytest.param({"general.architecture": "mamba"}, id="keys of another architecture"),
    ],
)
def test_garbled_metadata_falls_back_to_a_higher_estimate(broken: dict[str, str]) -> None:
    exact = estimate_memory(model(LLAMA), context_size=2048, parallel=2)
    guessed = estimate_memory(model({**LLAMA, **broken}), context_size=2048, parallel=2)
    assert "kv cache" in guessed.guessed
    assert guessed.kv_cache_bytes > exact.kv_cache_bytes
    assert guessed.total_bytes > exact.total_bytes


def test_fallback_kv_cache_is_high_for_smollm2(smollm2: common_pb2.Model) -> None:
    """The guess (weights / 4096 per token) must not undercut the real value."""
    garbled = {k: v for k, v in smollm2.config.gguf.items() if ".attention." not in k}
    real = estimate_memory(smollm2, context_size=2048, parallel=2)
    guessed = estimate_memory(
        model(garbled, ((GGUF, smollm2.layers[0].size),)), context_size=2048, parallel=2
    )
    assert guessed.guessed == ("kv cache",)
    assert real.kv_cache_bytes <= guessed.kv_cache_bytes <= 1.5 * real.kv_cache_bytes


def test_empty_model_does_not_crash() -> None:
    estimate = estimate_memory(common_pb2.Model(), context_size=0, parallel=0)
    assert estimate.weights_bytes == 0
    assert estimate.parallel == 1
    assert estimate.context_size > 0
    assert estimate.kv_cache_bytes > 0
    assert set(estimate.guessed) == {"context size", "kv cache", "vocabulary", "embedding length"}
    assert model_context_limit(common_pb2.Model()) == 0


def test_unset_context_uses_the_training_context() -> None:
    estimate = estimate_memory(model(LLAMA), context_size=0, parallel=2)
    assert estimate.context_size == 4096
    assert estimate == estimate_memory(model(LLAMA), context_size=4096, parallel=2)


def test_prompt_cache_bound_is_overhead() -> None:
    plain = estimate_memory(model(LLAMA), context_size=10, parallel=1)
    cached = estimate_memory(model(LLAMA), context_size=10, parallel=1, prompt_cache_bytes=1 << 30)
    assert cached.overhead_bytes - plain.overhead_bytes == 1 << 30


def test_larger_vocabulary_costs_more_overhead() -> None:
    small = estimate_memory(model(LLAMA), context_size=10, parallel=1)
    large = estimate_memory(
        model({**LLAMA, "llama.vocab_size": "100000"}), context_size=10, parallel=1
    )
    assert large.overhead_bytes > small.overhead_bytes
    assert large.kv_cache_bytes == small.kv_cache_bytes


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        pytest.param(((GGUF, 100), (LICENSE, 7), (MMPROJ, 20)), 120, id="gguf and mmproj"),
        pytest.param(
            (
                ("application/vnd.cncf.model.weight.v1.raw", 50),
                ("application/vnd.cncf.model.weight.v1.gguf", 5),
                ("application/vnd.cncf.model.doc.v1.raw", 3),
            ),
            55,
            id="modelpack weights",
        ),
        pytest.param((("application/octet-stream", 9), (LICENSE, 1)), 10, id="none known: all"),
        pytest.param((), 0, id="no layers"),
    ],
)
def test_weights_are_the_weight_layers(layers: tuple[tuple[str, int], ...], expected: int) -> None:
    assert weights_bytes(model(LLAMA, layers)) == expected
    assert estimate_memory(model(LLAMA, layers), context_size=1, parallel=1).weights_bytes == (
        expected
    )


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (98_362_432, "93.8 MiB"),
        (9 << 30, "9.0 GiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_describe_names_the_parts() -> None:
    estimate = MemoryEstimate(
        weights_bytes=8 << 30,
        kv_cache_bytes=1 << 30,
        overhead_bytes=1 << 29,
        context_size=4096,
        parallel=4,
    )
    assert estimate.describe() == (
        "9.5 GiB (weights 8.0 GiB + KV cache 1.0 GiB + overhead 512.0 MiB)"
    )
