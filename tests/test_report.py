"""Reports: table layout, content and notes; deterministic JSON/JSONL."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from factories import random_records
from l4.errors import ValidationError
from l4.metrics import ItlRecorder, RequestRecord, SloConfig, summarize
from l4.report import (
    CAPTION_KEYS,
    CV_SENTENCE,
    format_seconds,
    json_text,
    metric_rows,
    overload_warnings,
    print_capacity,
    print_table,
    render_table,
    render_tables,
    requests_jsonl_text,
    slo_sentence,
    table_caption,
    write_json,
    write_requests_jsonl,
)

CONFIG: dict[str, object] = {
    "trace": "mooncake_conversation",
    "rate": 12.5,
    "instances": 16,
    "profile": "llama-3.2-3b-h100",
    "alpha": "calibrated",
    "seed": 7,
    "duration": "600 s",
}


def summary(records: list[RequestRecord]) -> dict[str, object]:
    itl = ItlRecorder()
    itl.add_run(0.02, 0.0, 100, 4)
    return summarize(
        records,
        itl,
        slo=SloConfig(),
        unloaded=lambda _i, _o: (0.05, 0.01),
        output_tokens_by_group=[[100, 120, 80, 100]],
        migrations_by_reason={"rebalance": 8},
        preemptions=1,
        sim_wall_s=0.5,
    )


def rendered(
    results: dict[str, dict[str, object]],
    config: dict[str, object],
    *,
    width: int = 250,
    slo: SloConfig | None = None,
) -> str:
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
    print_table(console, results, config, slo=slo)
    return console.export_text()


def row(text: str, label: str) -> list[str]:
    """The cells of the table row whose label is ``label`` in rendered text."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in\n{text}")


def test_table_has_one_column_per_policy_and_the_run_description() -> None:
    results = {"l4": summary(random_records(0)), "round_robin": summary(random_records(1))}
    text = rendered(results, CONFIG)
    header = next(line for line in text.splitlines() if "metric" in line)
    assert header.index("l4") < header.index("round_robin")
    for key, value in CONFIG.items():
        assert f"{key}={value}" in text
    assert row(text, "completed (requests)") == ["38", "38"]
    assert row(text, "unfinished (requests)") == ["2", "2"]
    assert row(text, "ITL p99 (ms)") == ["20.0", "20.0"]  # every ITL sample is 20 ms
    assert render_table(results, CONFIG).row_count == len(metric_rows(results))


def test_a_row_of_durations_has_one_unit() -> None:
    fast = {"ttft_s": {"mean": 0.0123}, "e2e_s": {"mean": 0.5}}
    slow = {"ttft_s": {"mean": 0.5}, "e2e_s": {"mean": 2.0}}
    rows = dict(metric_rows({"a": fast, "b": slow}))
    assert rows["TTFT mean (ms)"] == ["12.3", "500"]
    assert rows["E2E mean (s)"] == ["0.500", "2.00"]
    assert rows["TPOT mean (s)"] == ["—", "—"]  # nothing measured: no unit to choose


# Six policies whose names and cells need, by hand: the label column 21 characters
# ("unfinished (requests)") + 3 of padding and border, each policy max(len(name), len(cells)) + 3,
# and 1 for the closing border. At 80 columns: 25 + 14 (round_robin) + 13 (least_load)
# + 9 (random) + 10 (llumnix) = 71 <= 80, + 17 (length_buckets) = 88 > 80.
SIX = ("round_robin", "least_load", "random", "llumnix", "length_buckets", "l4_bids")


@pytest.mark.parametrize(
    ("width", "tables"),
    [(80, [SIX[:4], SIX[4:]]), (120, [SIX])],
)
def test_table_fits_the_terminal_without_cutting_names(
    width: int, tables: list[tuple[str, ...]]
) -> None:
    results = {name: summary(random_records(seed)) for seed, name in enumerate(SIX)}
    laid_out = render_tables(results, CONFIG, width=width)
    assert [[str(c.header) for c in t.columns[1:]] for t in laid_out] == [list(t) for t in tables]
    text = rendered(results, CONFIG, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    for name in SIX:
        assert f" {name} " in text
    for label, _cells in metric_rows(results):
        assert label in text  # row labels, with their units, are never cut either


def test_notes_state_the_slo_and_explain_cv() -> None:
    results = {"l4": summary(random_records(0))}
    text = rendered(results, CONFIG, slo=SloConfig(scale=5.0))
    assert "TTFT <= 5x unloaded and TPOT <= 5x unloaded" in text
    assert CV_SENTENCE in " ".join(text.split())


@pytest.mark.parametrize(
    ("slo", "words"),
    [
        (SloConfig(scale=5.0), "TTFT <= 5x unloaded and TPOT <= 5x unloaded (unloaded:"),
        (SloConfig(scale=3.0, ttft_s=2.0), "TTFT <= 2.00 s and TPOT <= 3x unloaded (unloaded:"),
        (SloConfig(ttft_s=0.5, tpot_s=0.05), "TTFT <= 500 ms and TPOT <= 50.0 ms"),
    ],
)
def test_slo_sentence(slo: SloConfig, words: str) -> None:
    sentence = slo_sentence(slo)
    assert words in sentence
    assert ("unloaded" in sentence) == (slo.ttft_s is None or slo.tpot_s is None)


def _overloaded(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "completed": 100,
        "unfinished": 0,
        "slo_attainment": 0.95,
        "ttft_s": {"mean": 0.9},
        "unloaded_ttft_s": {"mean": 0.1},
    }
    return {**base, **changes}


def test_overload_warnings_name_each_sign() -> None:
    assert overload_warnings({"ok": _overloaded()}) == []  # 9x unloaded, 95%: not overloaded
    lines = overload_warnings(
        {
            "a": _overloaded(unfinished=5, completed=95),
            "b": _overloaded(slo_attainment=0.2),
            "c": _overloaded(ttft_s={"mean": 435.0}, unloaded_ttft_s={"mean": 0.51}),
        }
    )
    assert lines == [
        "a: 5 of 100 requests unfinished when the simulation stopped",
        "b: only 20% of requests met the goodput SLO",
        "c: mean TTFT 435 s is 853x the unloaded 510 ms: requests mostly wait in queues",
    ]


def test_print_table_warns_about_overload_only_when_there_is_some() -> None:
    config = CONFIG
    calm = rendered({"l4": _overloaded()}, config)
    assert "overloaded" not in calm
    busy = rendered({"l4": _overloaded(slo_attainment=0.04)}, config)
    assert "warning: overloaded at this rate" in busy
    assert "only 4% of requests met the goodput SLO" in busy


def test_capacity_report_states_target_run_and_slo() -> None:
    console = Console(file=io.StringIO(), record=True, width=80, color_system=None)
    results = {
        "least_load": {"rate_scale": 6.5, "requests_per_s": 22.1, "goodput_requests_per_s": 20.3},
        "random": {"rate_scale": None, "requests_per_s": None, "goodput_requests_per_s": None},
    }
    print_capacity(console, results, CONFIG, target=0.9, slo=SloConfig(scale=5.0))
    text = console.export_text()
    assert row(text, "least_load") == ["6.5", "22.1", "20.3"]
    assert row(text, "random") == ["—", "—", "—"]
    assert ">= 90% SLO" in text and "trace=mooncake_conversation" in text
    assert "TTFT <= 5x unloaded" in text


def test_table_shows_dashes_for_unmeasured_values() -> None:
    empty = summarize(
        [],
        ItlRecorder(),
        slo=SloConfig(),
        unloaded=lambda _i, _o: (1.0, 1.0),
        output_tokens_by_group=[],
        migrations_by_reason={},
        preemptions=0,
        sim_wall_s=0.0,
    )
    text = rendered({"idle": empty}, CONFIG)
    assert row(text, "completed (requests)") == ["0"]
    assert row(text, "TTFT mean (s)") == ["—"]
    assert "None" not in text and "nan" not in text


def test_caption_requires_the_run_description() -> None:
    for key in CAPTION_KEYS:
        config = {k: v for k, v in CONFIG.items() if k != key}
        with pytest.raises(ValidationError, match=key):
            table_caption(config)
        with pytest.raises(ValidationError, match=key):
            render_tables({"l4": _overloaded()}, config, width=80)
    caption = table_caption({**CONFIG, "slo_scale": 5.0})
    assert caption.startswith("trace=mooncake_conversation  rate=12.5")
    assert caption.endswith("slo_scale=5.0")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (math.nan, "—"),
        (0.001234, "1.23 ms"),
        (0.01234, "12.3 ms"),
        (0.1234, "123 ms"),
        (1.234, "1.23 s"),
        (12.34, "12.3 s"),
        (123.4, "123 s"),
    ],
)
def test_format_seconds(value: float | None, text: str) -> None:
    assert format_seconds(value) == text


def test_write_json_is_deterministic(tmp_path: Path) -> None:
    report_a = {"config": CONFIG, "results": {"l4": summary(random_records(0))}}
    report_b = {
        "results": {"l4": summary(random_records(0))},
        "config": dict(reversed(CONFIG.items())),
    }
    a, b = tmp_path / "a" / "deep" / "r.json", tmp_path / "b.json"
    write_json(a, report_a)
    write_json(b, report_b)
    text = a.read_text()
    assert text == b.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == json.loads(json.dumps(report_a))
    assert '\n  "config": {\n' in text  # indent 2, keys sorted


def test_write_json_writes_floats_as_repr_and_refuses_nan(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(path, {"x": 0.1 + 0.2, "n": np.int64(3), "y": np.float64(0.5)})
    assert path.read_text() == '{\n  "n": 3,\n  "x": 0.30000000000000004,\n  "y": 0.5\n}\n'
    with pytest.raises(ValidationError):
        write_json(path, {"x": math.nan})


def test_write_requests_jsonl(tmp_path: Path) -> None:
    records = {"l4": random_records(0, 3), "rr": random_records(1, 2)}
    path = tmp_path / "out" / "requests.jsonl"
    write_requests_jsonl(path, records)
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    rows = [json.loads(line) for line in lines]
    assert [(r["policy"], r["request_id"]) for r in rows] == [
        ("l4", 0),
        ("l4", 1),
        ("l4", 2),
        ("rr", 0),
        ("rr", 1),
    ]
    assert list(rows[0]) == [
        "policy",
        "request_id",
        "arrival_s",
        "first_token_s",
        "finish_s",
        "input_tokens",
        "output_tokens",
        "generated_tokens",
        "instances",
        "migrations",
        "preemptions",
    ]
    first = records["l4"][0]
    assert rows[0]["finish_s"] == first.finish_s
    assert rows[0]["instances"] == list(first.instances)
    unfinished = rows[2]
    assert unfinished["finish_s"] is None and unfinished["first_token_s"] is None
    again = tmp_path / "again.jsonl"
    write_requests_jsonl(again, records)
    assert again.read_bytes() == path.read_bytes()
    assert requests_jsonl_text(records) == path.read_text()


def test_json_text_is_what_write_json_writes(tmp_path: Path) -> None:
    report = {"config": CONFIG, "results": {"l4": summary(random_records(0))}}
    write_json(tmp_path / "r.json", report)
    assert json_text(report) == (tmp_path / "r.json").read_text()
