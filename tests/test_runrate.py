"""The rate rule shared by simulate, capacity and plan: only bundled traces get the demo x4."""

from __future__ import annotations

from pathlib import Path

import pytest

from l4.runrate import DEMO_RATE_SCALE, choose_rate, rate_caption, rate_fields
from l4.workload import WorkloadSpec, build_workload


def _trace(tmp_path: Path, rows: str = "0,100,10\n10,100,10\n20,100,10\n") -> str:
    path = tmp_path / "mine.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    return str(path)


@pytest.mark.parametrize(
    ("trace", "rate", "scale", "expected_scale", "source"),
    [
        ("mooncake", None, None, DEMO_RATE_SCALE, "bundled-default"),
        ("sharegpt", None, None, DEMO_RATE_SCALE, "bundled-default"),
        ("mooncake", 2.0, None, 1.0, "default"),  # --rate alone means that rate
        ("mooncake", None, 1.0, 1.0, "--rate-scale"),
        ("mine.jsonl", None, None, 1.0, "default"),  # a user's file: its recorded times
        ("mine.jsonl", None, 3.0, 3.0, "--rate-scale"),
        ("mine.jsonl", 5.0, 2.0, 2.0, "--rate-scale"),
    ],
)
def test_choose_rate(
    trace: str, rate: float | None, scale: float | None, expected_scale: float, source: str
) -> None:
    choice = choose_rate(trace, rate_rps=rate, rate_scale=scale)
    assert (choice.rate_scale, choice.scale_source, choice.rate_rps) == (
        expected_scale,
        source,
        rate,
    )


def test_a_user_trace_runs_at_its_recorded_times(tmp_path: Path) -> None:
    trace = _trace(tmp_path)
    choice = choose_rate(trace, rate_rps=None, rate_scale=None)
    workload = build_workload(
        WorkloadSpec(trace=trace, max_context_tokens=4096, rate_scale=choice.rate_scale)
    )
    assert [r.arrival_s for r in workload.requests] == [0.0, 10.0, 20.0]
    fields = rate_fields(choice, workload)
    assert fields == {
        "rate": 0.15,  # 3 requests over the 20 s to the last arrival
        "rate_scale": 1.0,
        "rate_source": "trace timestamps x1 (recorded times)",
    }
    assert rate_caption(fields) == "0.15 req/s = trace timestamps x1 (recorded times)"


def test_rate_source_names_each_origin(tmp_path: Path) -> None:
    def source(trace: str, rate: float | None, scale: float | None) -> str:
        choice = choose_rate(trace, rate_rps=rate, rate_scale=scale)
        spec = WorkloadSpec(
            trace=trace,
            max_context_tokens=200_000,
            rate_rps=rate,
            rate_scale=choice.rate_scale,
            num_requests=50,
        )
        return str(rate_fields(choice, build_workload(spec))["rate_source"])

    assert source("azure-conv", None, None) == (
        "trace timestamps x4 (default for bundled traces; --rate-scale 1 for the trace's rate)"
    )
    assert source("sharegpt", None, None).startswith("bundled default 8 req/s x4 (default")
    assert source("azure-conv", 2.5, None) == "--rate 2.5 req/s x1 (default)"
    assert source(_trace(tmp_path), None, 6.0) == "trace timestamps x6 (--rate-scale)"
