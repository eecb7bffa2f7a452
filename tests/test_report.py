"""Reports: table content and caption, deterministic JSON/JSONL, non-empty PNG plots."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from l4.errors import ValidationError
from l4.metrics import ItlRecorder, RequestRecord, SloConfig, summarize
from l4.report import (
    CAPTION_KEYS,
    format_seconds,
    plot_latency_cdfs,
    plot_sweep,
    print_table,
    render_table,
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

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_records(seed: int, n: int = 40) -> list[RequestRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        arrival = float(i) * 0.1
        output = int(rng.integers(1, 50))
        ttft = float(rng.uniform(0.02, 0.5))
        finished = i < n - 2
        records.append(
            RequestRecord(
                request_id=i,
                arrival_s=arrival,
                input_tokens=int(rng.integers(10, 2000)),
                output_tokens=output,
                generated_tokens=output if finished else 0,
                first_token_s=arrival + ttft if finished else None,
                finish_s=arrival + ttft + 0.02 * (output - 1) if finished else None,
                instances=(i % 4,) if i % 5 else (i % 4, (i + 1) % 4),
                migrations=0 if i % 5 else 1,
                preemptions=0,
            )
        )
    return records


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


def rendered(results: dict[str, dict[str, object]], config: dict[str, object]) -> str:
    console = Console(file=io.StringIO(), record=True, width=250, color_system=None)
    print_table(console, results, config)
    return console.export_text()


def test_table_has_one_row_per_policy_and_the_run_description() -> None:
    results = {"l4": summary(make_records(0)), "round_robin": summary(make_records(1))}
    text = rendered(results, CONFIG)
    assert "l4" in text and "round_robin" in text
    for key, value in CONFIG.items():
        assert f"{key}={value}" in text
    assert "38/2" in text  # completed/unfinished
    assert "20.0 ms" in text  # ITL p99
    assert render_table(results, CONFIG).row_count == 2


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
    assert "0/0" in text
    assert "—" in text
    assert "None" not in text and "nan" not in text


def test_caption_requires_the_run_description() -> None:
    for key in CAPTION_KEYS:
        config = {k: v for k, v in CONFIG.items() if k != key}
        with pytest.raises(ValidationError, match=key):
            table_caption(config)
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
    report_a = {"config": CONFIG, "results": {"l4": summary(make_records(0))}}
    report_b = {
        "results": {"l4": summary(make_records(0))},
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
    records = {"l4": make_records(0, 3), "rr": make_records(1, 2)}
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


def test_plot_latency_cdfs_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "cdf.png"
    plot_latency_cdfs(path, {"l4": make_records(0), "rr": make_records(1), "none": []})
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_sweep_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "sweep.png"
    points = {
        policy: [(rate, summary(make_records(seed))) for rate in (4.0, 1.0, 2.0)]
        for seed, policy in enumerate(("l4", "rr"))
    }
    points["empty"] = []
    plot_sweep(path, points, "rate (req/s)")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plots_close_their_figures(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plot_latency_cdfs(tmp_path / "a.png", {"l4": make_records(0)})
    plot_sweep(tmp_path / "b.png", {"l4": [(1.0, summary(make_records(0)))]}, "rate (req/s)")
    assert len(plt.get_fignums()) == before
