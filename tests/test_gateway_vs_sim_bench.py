"""gateway_vs_sim.py spaces a burst (requests of one arrival time) in trace order, in both runs,
and its simulator draws tick at their own phase against the trace."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from l4.request import RequestSpec
from l4.workload import Workload


def _bench() -> object:
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module("gateway_vs_sim")


def _workload(arrivals: list[float]) -> Workload:
    requests = tuple(
        RequestSpec(request_id=i, arrival_s=t, input_tokens=10 + i, output_tokens=5)
        for i, t in enumerate(arrivals)
    )
    return Workload(
        name="t",
        source="bundled",
        timestamped=True,
        requests=requests,
        mean_rate_rps=1.0,
        clipped_requests=0,
    )


def test_a_burst_is_spaced_in_trace_order_and_nothing_else_moves() -> None:
    spread = _bench().spread_ties  # type: ignore[attr-defined]
    out = spread(_workload([0.0, 0.0, 0.0, 1.5, 3.0, 3.0]), 0.01)
    assert [(r.request_id, r.arrival_s) for r in out.requests] == [
        (0, 0.0),
        (1, 0.01),
        (2, 0.02),
        (3, 1.5),
        (4, 3.0),
        (5, 3.01),
    ]
    assert [r.input_tokens for r in out.requests] == [10, 11, 12, 13, 14, 15]
    same = _workload([0.0, 0.0])
    assert spread(same, 0.0) is same  # 0: as in the trace


def test_jittered_arrivals_are_late_by_less_than_the_jitter_and_reproducible() -> None:
    jitter = _bench().jitter_arrivals  # type: ignore[attr-defined]
    base = _workload([0.0, 0.0, 0.001, 1.0, 2.0])
    out = jitter(base, 0.005, 3)
    before = {r.request_id: r.arrival_s for r in base.requests}
    shifts = [r.arrival_s - before[r.request_id] for r in out.requests]
    assert all(0.0 <= d < 0.005 for d in shifts) and any(d > 0 for d in shifts)
    assert [r.arrival_s for r in out.requests] == sorted(r.arrival_s for r in out.requests)
    assert sorted(r.request_id for r in out.requests) == [0, 1, 2, 3, 4]
    assert jitter(base, 0.005, 3) == out  # the draw's seed decides it
    assert jitter(base, 0.005, 4) != out
    assert jitter(base, 0.0, 3) is base  # draw 0: as the trace


def test_summary_is_the_median_and_range_of_every_key() -> None:
    summarise = _bench().summarise  # type: ignore[attr-defined]
    median, spread = summarise([{"ttft": 1.0, "cascade": 2.0}, {"ttft": 3.0}, {"ttft": 2.0}])
    assert median == {"cascade": 0.0, "ttft": 2.0}  # a reason a run lacks counts 0 there
    assert spread == {"cascade": [0.0, 2.0], "ttft": [1.0, 3.0]}


def test_the_policys_counts_are_read_from_its_stats_and_shown_sim_against_live() -> None:
    bench = _bench()
    counts = bench.policy_counts  # type: ignore[attr-defined]
    stats = {
        "spills": 79, "overflows": 2, "boundary_moves": 83, "replans": 0, "stages": 4,
        "agent_events": {"asks_cascade": 29, "bids": 921},
    }  # fmt: skip
    assert counts(stats) == {
        "policy_spills": 79.0,
        "policy_overflows": 2.0,
        "policy_boundary_moves": 83.0,
        "policy_replans": 0.0,
        "policy_asks_cascade": 29.0,
    }
    assert counts({"round_robin": 1}) == {} and counts(None) == {}
    live = {**counts({**stats, "spills": 101}), "migrations": 20.0, "errors": 0.0}
    sim = {**counts(stats), "migrations": 29.0}
    for metric in ("ttft", "tpot", "e2e"):
        live[metric] = sim[metric] = 1.0
    result = {
        "args": {"trace": "t", "rate_scale": "1", "duration": "1", "instances": "4",
                 "profile": "p", "time_scale": "1", "seed": "0", "repeats": "1"},
        "requests": 1,
        "rows": [{"policy": "l4", "sim": sim, "live": live, "sim_runs": [], "live_runs": []}],
    }  # fmt: skip
    md = bench.render(result)  # type: ignore[attr-defined]
    assert "| l4 | 79 / 101 | 2 / 2 | 83 / 83 | 0 / 0 | 29 / 29 |" in md


def test_draws_tick_at_their_own_phase_and_draw_0_as_the_simulator() -> None:
    phase = _bench().tick_phase  # type: ignore[attr-defined]
    assert phase(0, 5) == 1.0
    drawn = [phase(d, 5) for d in range(1, 5)]
    # One draw in each quarter of (0, 1], the same every time.
    assert all((d - 1) / 4 < p <= d / 4 for d, p in enumerate(drawn, start=1))
    assert drawn == [phase(d, 5) for d in range(1, 5)]


def test_the_report_gives_means_over_runs_beside_the_medians() -> None:
    bench = _bench()
    sim = [{"ttft": 0.6, "tpot": 0.013, "e2e": 4.0, "migrations": 20.0}] * 2 + [
        {"ttft": 0.6, "tpot": 0.016, "e2e": 4.0, "migrations": 29.0}
    ]
    live = [
        {"ttft": 0.66, "tpot": 0.016, "e2e": 4.4, "migrations": 30.0},
        {"ttft": 0.66, "tpot": 0.013, "e2e": 4.4},  # a policy that moved nothing: 0
    ]
    means = bench.run_means(live)  # type: ignore[attr-defined]
    assert means["tpot"] == pytest.approx(0.0145) and means["migrations"] == 15.0
    row = {"policy": "l4", "sim_runs": sim, "live_runs": live}
    row |= {"sim": sim[0], "live": live[0]}
    args = {"trace": "t", "rate_scale": "1", "duration": "1", "instances": "4", "profile": "p"}
    args |= {"time_scale": "1", "seed": "0", "repeats": "2", "sim_draws": "3"}
    md = bench.render({"args": args, "requests": 3, "rows": [row]})  # type: ignore[attr-defined]
    # Medians: 13.0 / 16.0 ms; means over runs: 14.0 / 14.5 ms.
    assert "| l4 | 600 / 660 ms (+10.0%) | 14.0 / 14.5 ms (+3.6%) |" in md
    assert "0.60 s / 16.0 ms (nan)" in md
