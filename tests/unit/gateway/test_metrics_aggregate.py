"""The pure /metrics aggregation: parse, label, merge, re-encode (text format 0.0.4)."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.metrics.aggregate import (
    CONTENT_TYPE,
    RunnerText,
    aggregate,
    runner_labels,
)

LLAMA = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 31
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 38
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 248.35
"""

LABELS = 'backend="llama.cpp",model="ai/smollm2:latest",mode="completion",worker="w1"'
OTHER_LABELS = 'backend="llama.cpp",model="ai/other:v2",mode="completion",worker="w2"'


def runner(text: str, model: str = "ai/smollm2:latest", worker: str = "w1") -> RunnerText:
    return RunnerText(
        text=text, labels=runner_labels(model=model, worker=worker), source=f"{model} on {worker}"
    )


def test_content_type_is_text_format_0_0_4() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_runner_labels_are_dmrs_plus_the_worker() -> None:
    assert runner_labels(model="ai/smollm2:latest", worker="w1") == {
        "backend": "llama.cpp",
        "model": "ai/smollm2:latest",
        "mode": "completion",
        "worker": "w1",
    }


def test_every_sample_gets_the_runner_labels_and_names_are_kept() -> None:
    result = aggregate([runner(LLAMA)])

    assert result.skipped == ()
    assert result.text == (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached"
        " tokens\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        f"llamacpp:prompt_tokens_total{{{LABELS}}} 31\n"
        # A counter without _total keeps its name (prometheus_client's parser would add _total).
        "# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)\n"
        "# TYPE llamacpp:n_tokens_max counter\n"
        f"llamacpp:n_tokens_max{{{LABELS}}} 38\n"
        "# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s\n"
        "# TYPE llamacpp:prompt_tokens_seconds gauge\n"
        f"llamacpp:prompt_tokens_seconds{{{LABELS}}} 248.35\n"
    )


def test_families_of_two_runners_merge_under_one_help_and_type() -> None:
    second = LLAMA.replace(" 31\n", " 7\n").replace(" 38\n", " 9\n").replace("248.35", "12.5")
    extra = "# HELP only_here Only on the second runner\n# TYPE only_here gauge\nonly_here 1\n"

    result = aggregate([runner(LLAMA), runner(second + extra, "ai/other:v2", "w2")])

    text = result.text
    assert text.count("# HELP llamacpp:prompt_tokens_total ") == 1
    assert text.count("# TYPE llamacpp:prompt_tokens_total counter\n") == 1
    assert text.count("# TYPE llamacpp:n_tokens_max counter\n") == 1
    assert (
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        f"llamacpp:prompt_tokens_total{{{LABELS}}} 31\n"
        f"llamacpp:prompt_tokens_total{{{OTHER_LABELS}}} 7\n"
    ) in text
    assert (
        "# TYPE llamacpp:prompt_tokens_seconds gauge\n"
        f"llamacpp:prompt_tokens_seconds{{{LABELS}}} 248.35\n"
        f"llamacpp:prompt_tokens_seconds{{{OTHER_LABELS}}} 12.5\n"
    ) in text
    # First seen first: the second runner's own family comes last.
    assert text.endswith(f"# TYPE only_here gauge\nonly_here{{{OTHER_LABELS}}} 1\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "# HELP req_seconds Latency\n"
            "# TYPE req_seconds histogram\n"
            'req_seconds_bucket{le="0.1"} 1\n'
            'req_seconds_bucket{le="+Inf"} 3\n'
            "req_seconds_sum 2.5\n"
            "req_seconds_count 3\n",
            "# HELP req_seconds Latency\n"
            "# TYPE req_seconds histogram\n"
            'req_seconds_bucket{le="0.1",model="m",worker="w"} 1\n'
            'req_seconds_bucket{le="+Inf",model="m",worker="w"} 3\n'
            'req_seconds_sum{model="m",worker="w"} 2.5\n'
            'req_seconds_count{model="m",worker="w"} 3\n',
        ),
        (
            "# TYPE rpc_seconds summary\n"
            'rpc_seconds{quantile="0.5"} 0.25\n'
            "rpc_seconds_sum 1\n"
            "rpc_seconds_count 4\n",
            "# TYPE rpc_seconds summary\n"
            'rpc_seconds{quantile="0.5",model="m",worker="w"} 0.25\n'
            'rpc_seconds_sum{model="m",worker="w"} 1\n'
            'rpc_seconds_count{model="m",worker="w"} 4\n',
        ),
        (
            '# TYPE hits_total counter\nhits_total{path="/a"} 5\n',
            '# TYPE hits_total counter\nhits_total{path="/a",model="m",worker="w"} 5\n',
        ),
        (
            "no_type_line 2\n",
            '# TYPE no_type_line untyped\nno_type_line{model="m",worker="w"} 2\n',
        ),
        (
            '# TYPE odd gauge\nodd NaN\nodd{k="inf"} +Inf\nodd{k="neg"} -Inf\nodd{k="e"} 1.5e-07\n',
            "# TYPE odd gauge\n"
            'odd{model="m",worker="w"} NaN\n'
            'odd{k="inf",model="m",worker="w"} +Inf\n'
            'odd{k="neg",model="m",worker="w"} -Inf\n'
            'odd{k="e",model="m",worker="w"} 1.5e-07\n',
        ),
        (
            "# TYPE stamped gauge\nstamped 1 1700000000123\n",
            '# TYPE stamped gauge\nstamped{model="m",worker="w"} 1 1700000000123\n',
        ),
    ],
    ids=["histogram", "summary", "counter-total", "untyped", "special-values", "timestamp"],
)
def test_suffixes_types_and_values_survive(text: str, expected: str) -> None:
    result = aggregate([RunnerText(text=text, labels={"model": "m", "worker": "w"}, source="r")])
    assert result.skipped == ()
    assert result.text == expected


def test_label_values_and_help_are_escaped() -> None:
    text = '# HELP esc A back\\\\slash and\\na newline\n# TYPE esc gauge\nesc{path="a\\"b\\\\c\\nd"} 1\n'

    result = aggregate([runner(text, model='odd"model\\name\nx')])

    assert result.text == (
        "# HELP esc A back\\\\slash and\\na newline\n"
        "# TYPE esc gauge\n"
        'esc{path="a\\"b\\\\c\\nd",backend="llama.cpp",model="odd\\"model\\\\name\\nx",'
        'mode="completion",worker="w1"} 1\n'
    )
    [family] = text_string_to_metric_families(result.text)
    assert family.documentation == "A back\\slash and\na newline"
    assert family.samples[0].labels["path"] == 'a"b\\c\nd'
    assert family.samples[0].labels["model"] == 'odd"model\\name\nx'


def test_a_scraped_label_that_clashes_is_kept_as_exported() -> None:
    text = '# TYPE g gauge\ng{model="internal",worker="7"} 1\n'
    result = aggregate([runner(text)])
    assert f'g{{exported_model="internal",exported_worker="7",{LABELS}}} 1\n' in result.text


def test_output_parses_back_to_the_same_samples() -> None:
    second = LLAMA.replace(" 31\n", " 7\n")
    result = aggregate([runner(LLAMA), runner(second, "ai/other:v2", "w2")])

    parsed = {
        (sample.name, sample.labels["model"]): sample.value
        for family in text_string_to_metric_families(result.text)
        for sample in family.samples
    }
    assert parsed[("llamacpp:prompt_tokens_total", "ai/smollm2:latest")] == 31
    assert parsed[("llamacpp:prompt_tokens_total", "ai/other:v2")] == 7
    assert math.isclose(parsed[("llamacpp:prompt_tokens_seconds", "ai/other:v2")], 248.35)
    assert len(parsed) == 6


def test_an_unparsable_runner_is_skipped_and_the_others_kept() -> None:
    result = aggregate([runner("this is { not metrics\n", "ai/broken"), runner(LLAMA)])

    assert len(result.skipped) == 1 and result.skipped[0].startswith("ai/broken on w1:")
    assert "ai/broken" not in result.text
    assert f"llamacpp:prompt_tokens_total{{{LABELS}}} 31\n" in result.text


def test_a_family_whose_type_differs_between_runners_is_skipped_there() -> None:
    first = "# TYPE shared gauge\nshared 1\n"
    second = "# TYPE shared summary\nshared_sum 1\nshared_count 1\n# TYPE mine gauge\nmine 2\n"

    result = aggregate([runner(first), runner(second, "ai/other:v2", "w2")])

    assert result.skipped == ("ai/other:v2 on w2: shared is a summary here but a gauge elsewhere",)
    assert "# TYPE shared gauge\n" in result.text and "shared_sum" not in result.text
    assert f"mine{{{OTHER_LABELS}}} 2\n" in result.text


def test_nothing_to_aggregate() -> None:
    assert aggregate([]).text == ""
    # A family with a TYPE line but no samples is not written.
    assert aggregate([runner("# HELP lonely Nothing\n# TYPE lonely gauge\n")]).text == ""
