"""DMR's aggregated `/metrics`: each runner's llama-server metrics, labelled, merged, re-encoded.

Pure functions, no I/O. Each runner's Prometheus text is parsed with prometheus_client's parser,
every sample gets the labels that say where it came from (DMR's `backend`, `model`, `mode`, plus
`worker`), families of the same name from different runners are merged under one HELP/TYPE, and
the result is written in text exposition format 0.0.4 (DMR's `pkg/metrics/aggregated_handler.go`).

Names are kept exactly as llama-server wrote them. prometheus_client's parser follows OpenMetrics
and renames the samples of a counter declared without `_total` (llama.cpp's
`llamacpp:n_tokens_max`) to `..._total`; the original TYPE lines say which counters those were, so
the rename is undone, as Go's parser (DMR's) never makes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from services.gateway.models_view import BACKEND_NAME

__all__ = [
    "CONTENT_TYPE",
    "MODE_LABEL_VALUE",
    "NO_ACTIVE_RUNNERS",
    "Aggregate",
    "RunnerText",
    "aggregate",
    "runner_labels",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_ACTIVE_RUNNERS = "# No active runners\n"
# One llama-server per model serves chat, completions and embeddings; DMR calls that mode
# "completion".
MODE_LABEL_VALUE = "completion"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_COUNTER_TYPE_LINE = re.compile(r"^[ \t]*#[ \t]*TYPE[ \t]+(\S+)[ \t]+counter[ \t]*$", re.MULTILINE)
_TOTAL = "_total"
# prometheus_client's family types -> the 0.0.4 TYPE keyword; anything else is written untyped.
_TYPE_KEYWORDS = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
}


def runner_labels(*, model: str, worker: str) -> dict[str, str]:
    """The labels DMR adds to every sample of one runner, plus the worker that runs it."""
    return {
        "backend": BACKEND_NAME,
        "model": model,
        "mode": MODE_LABEL_VALUE,
        "worker": worker,
    }


@dataclass(frozen=True)
class RunnerText:
    """One runner's metrics as its llama-server wrote them, and the labels it gets."""

    text: str
    labels: Mapping[str, str]
    # Names the runner in warnings, e.g. "ai/smollm2:latest on worker-1".
    source: str


@dataclass(frozen=True)
class Aggregate:
    text: str
    # Why a runner's text, or one family of it, was left out; one line each.
    skipped: tuple[str, ...] = ()


@dataclass
class _Family:
    """A metric family as written in 0.0.4: `name` is the name on its HELP and TYPE lines."""

    name: str
    help: str
    type: str
    samples: list[Sample] = field(default_factory=list)


class _Unwritable(ValueError):
    pass


def aggregate(runners: Sequence[RunnerText]) -> Aggregate:
    """Merge the runners' metrics; families appear in the order they are first seen."""
    merged: dict[str, _Family] = {}
    skipped: list[str] = []
    for runner in runners:
        try:
            families = _parse(runner.text)
        except ValueError as exc:
            skipped.append(f"{runner.source}: unparsable metrics ({exc or 'malformed line'})")
            continue
        for family in families:
            if not family.samples:
                continue
            known = merged.get(family.name)
            if known is None:
                merged[family.name] = known = _Family(family.name, family.help, family.type)
            elif known.type != family.type:
                skipped.append(
                    f"{runner.source}: {family.name} is a {family.type} here but a "
                    f"{known.type} elsewhere"
                )
                continue
            known.samples.extend(_relabel(sample, runner.labels) for sample in family.samples)
    lines: list[str] = []
    for family in merged.values():
        try:
            lines.extend(_encode(family))
        except _Unwritable as exc:
            skipped.append(f"{family.name!r} left out: {exc}")
    return Aggregate(text="".join(lines), skipped=tuple(skipped))


def _parse(text: str) -> list[_Family]:
    """ValueError when prometheus_client cannot parse the text."""
    bare_counters = {name for name in _COUNTER_TYPE_LINE.findall(text) if not name.endswith(_TOTAL)}
    try:
        metrics = list(text_string_to_metric_families(text))
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        # The parser signals some malformed lines with the error of whatever step tripped.
        raise ValueError(str(exc)) from exc
    return [_family(metric, bare_counters) for metric in metrics]


def _family(metric: Metric, bare_counters: set[str]) -> _Family:
    kind = _TYPE_KEYWORDS.get(metric.type, "untyped")
    if kind != "counter":
        return _Family(metric.name, metric.documentation, kind, list(metric.samples))
    if metric.name in bare_counters:
        samples = [
            sample._replace(name=sample.name.removesuffix(_TOTAL)) for sample in metric.samples
        ]
        return _Family(metric.name, metric.documentation, kind, samples)
    return _Family(metric.name + _TOTAL, metric.documentation, kind, list(metric.samples))


def _relabel(sample: Sample, added: Mapping[str, str]) -> Sample:
    """The sample's labels, then `added`; a label of the same name is kept as `exported_<name>`
    (Prometheus's own rule for scraped labels that clash with target labels)."""
    labels: dict[str, str] = {}
    for name, value in sample.labels.items():
        labels[f"exported_{name}" if name in added else name] = value
    labels.update(added)
    return sample._replace(labels=labels)


def _encode(family: _Family) -> Iterable[str]:
    if not _METRIC_NAME.match(family.name):
        raise _Unwritable("the name is not valid in text format 0.0.4")
    lines = [f"# HELP {family.name} {_escape_help(family.help)}\n"] if family.help else []
    lines.append(f"# TYPE {family.name} {family.type}\n")
    for sample in family.samples:
        if not _METRIC_NAME.match(sample.name):
            raise _Unwritable(f"sample name {sample.name!r} is not valid in text format 0.0.4")
        lines.append(_sample_line(sample))
    return lines


def _sample_line(sample: Sample) -> str:
    parts = []
    for name, value in sample.labels.items():
        if not _LABEL_NAME.match(name):
            raise _Unwritable(f"label name {name!r} is not valid in text format 0.0.4")
        parts.append(f'{name}="{_escape_label_value(value)}"')
    labels = "{" + ",".join(parts) + "}" if parts else ""
    timestamp = "" if sample.timestamp is None else f" {round(float(sample.timestamp) * 1000)}"
    return f"{sample.name}{labels} {_format_value(sample.value)}{timestamp}\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    """As Go's strconv.FormatFloat(v, 'g', -1, 64) would, near enough for Prometheus."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
