"""Metrics: hand-computed small cases for every definition, and property tests of the expansions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4.errors import InvariantError, ValidationError
from l4.metrics import (
    ItlRecorder,
    RequestRecord,
    SloConfig,
    class_summaries,
    distribution,
    length_class,
    output_tokens_cv,
    summarize,
    weighted_percentiles,
)


def rec(
    request_id: int,
    arrival_s: float,
    first_token_s: float | None,
    finish_s: float | None,
    *,
    output_tokens: int,
    generated_tokens: int | None = None,
    input_tokens: int = 100,
) -> RequestRecord:
    if generated_tokens is None:
        generated_tokens = output_tokens if finish_s is not None else 0
    return RequestRecord(
        request_id=request_id,
        arrival_s=arrival_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        generated_tokens=generated_tokens,
        first_token_s=first_token_s,
        finish_s=finish_s,
        instances=(0,),
        migrations=0,
        preemptions=0,
    )


# A: TTFT 1, TPOT (5-1)/4 = 1, E2E 5.  B: one output token, TTFT 0.5 = E2E, no TPOT.
# C: started, unfinished (TTFT 1 counts).  D: never started.
RECORDS = (
    rec(0, 0.0, 1.0, 5.0, output_tokens=5),
    rec(1, 1.0, 1.5, 1.5, output_tokens=1),
    rec(2, 2.0, 3.0, None, output_tokens=10, generated_tokens=4),
    rec(3, 3.0, None, None, output_tokens=7),
)


def constant_unloaded(ttft_s: float, tpot_s: float):  # type: ignore[no-untyped-def]
    return lambda _input_tokens, _output_tokens: (ttft_s, tpot_s)


def must_not_be_called(_input_tokens: int, _output_tokens: int) -> tuple[float, float]:
    raise AssertionError("unloaded latency asked although both SLOs are absolute")


def run(  # type: ignore[no-untyped-def]
    records=RECORDS,
    *,
    slo: SloConfig | None = None,
    unloaded=None,
    itl: ItlRecorder | None = None,
    groups=((10, 30),),
    by_reason=None,
    preemptions: int = 0,
) -> dict[str, object]:
    return summarize(
        records,
        ItlRecorder() if itl is None else itl,
        slo=SloConfig() if slo is None else slo,
        unloaded=constant_unloaded(0.2, 0.25) if unloaded is None else unloaded,
        output_tokens_by_group=groups,
        migrations_by_reason={} if by_reason is None else by_reason,
        preemptions=preemptions,
        sim_wall_s=0.125,
    )


def test_counts_latencies_and_throughput() -> None:
    out = run()
    assert out["completed"] == 2
    assert out["unfinished"] == 2
    assert out["ttft_s"] == {"mean": pytest.approx(2.5 / 3), "p50": 1.0, "p90": 1.0, "p99": 1.0}
    # Only A has a TPOT: B has one output token, C is unfinished.
    assert out["tpot_s"] == {"mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0}
    assert out["e2e_s"] == {
        "mean": 2.75,
        "p50": 2.75,
        "p90": pytest.approx(0.5 + 0.9 * 4.5),
        "p99": pytest.approx(0.5 + 0.99 * 4.5),
    }
    # Window 0 -> 5 (last finish after last arrival 3).
    assert out["window_s"] == 5.0
    assert out["throughput"] == {"requests_per_s": 0.4, "output_tokens_per_s": 6 / 5}
    assert out["sim_wall_s"] == 0.125
    assert set(out) == {
        "completed",
        "unfinished",
        "ttft_s",
        "tpot_s",
        "itl_s",
        "e2e_s",
        "throughput",
        "goodput_requests_per_s",
        "slo_attainment",
        "classes",
        "migrations",
        "migrations_by_reason",
        "preemptions",
        "output_tokens_cv",
        "window_s",
        "sim_wall_s",
    }


def test_window_ends_at_last_arrival_when_later() -> None:
    records = (rec(0, 0.0, 0.5, 1.0, output_tokens=2), rec(1, 4.0, None, None, output_tokens=2))
    out = run(records)
    assert out["window_s"] == 4.0
    assert out["throughput"] == {"requests_per_s": 0.25, "output_tokens_per_s": 0.5}


def test_window_starts_at_first_arrival() -> None:
    out = run((rec(0, 10.0, 10.5, 12.0, output_tokens=4),))
    assert out["window_s"] == 2.0
    assert out["tpot_s"]["mean"] == 0.5  # type: ignore[index]


def test_goodput_with_scaled_slos() -> None:
    # Scale 5 x (0.2, 0.25) -> limits (1.0, 1.25): A meets both exactly at the TTFT bound, B meets
    # TTFT (1-token: TPOT not judged), C and D are unfinished.
    out = run(slo=SloConfig(scale=5.0))
    assert out["goodput_requests_per_s"] == 2 / 5
    assert out["slo_attainment"] == 0.5
    # Scale 4 -> TTFT limit 0.8: A fails.
    assert run(slo=SloConfig(scale=4.0))["goodput_requests_per_s"] == 1 / 5
    # TPOT limit 5 x 0.15 = 0.75 < A's TPOT 1: A fails; B has no TPOT to fail.
    out = run(slo=SloConfig(scale=5.0), unloaded=constant_unloaded(0.2, 0.15))
    assert out["goodput_requests_per_s"] == 1 / 5
    assert out["slo_attainment"] == 0.25


def test_goodput_scaled_slo_is_per_request() -> None:
    def unloaded(input_tokens: int, _output_tokens: int) -> tuple[float, float]:
        return input_tokens / 1000, 0.01

    records = (
        rec(0, 0.0, 0.4, 0.4, output_tokens=1, input_tokens=100),  # limit 0.5: meets
        rec(1, 0.0, 0.6, 0.6, output_tokens=1, input_tokens=100),  # limit 0.5: misses
        rec(2, 0.0, 0.6, 0.6, output_tokens=1, input_tokens=200),  # limit 1.0: meets
    )
    out = run(records, slo=SloConfig(scale=5.0), unloaded=unloaded)
    assert out["slo_attainment"] == pytest.approx(2 / 3)


def test_goodput_with_absolute_slos() -> None:
    out = run(slo=SloConfig(ttft_s=0.6, tpot_s=2.0), unloaded=must_not_be_called)
    assert out["goodput_requests_per_s"] == 1 / 5  # only B: A's TTFT 1 > 0.6
    out = run(slo=SloConfig(ttft_s=1.0, tpot_s=0.9), unloaded=must_not_be_called)
    assert out["goodput_requests_per_s"] == 1 / 5  # A's TPOT 1 > 0.9
    # Absolute TTFT, scaled TPOT (5 x 0.25 = 1.25): A and B meet.
    out = run(slo=SloConfig(scale=5.0, ttft_s=1.0))
    assert out["goodput_requests_per_s"] == 2 / 5


def test_slo_bound_tolerates_float_rounding() -> None:
    # 0.1 + 0.2 != 0.3 in floats: a request exactly at its unloaded latency meets scale 1.
    records = (rec(0, 0.0, 0.1 + 0.2, 0.1 + 0.2, output_tokens=1),)
    out = run(records, slo=SloConfig(scale=1.0), unloaded=constant_unloaded(0.3, 0.0))
    assert out["slo_attainment"] == 1.0


def test_unloaded_is_memoised_per_distinct_pair() -> None:
    calls: list[tuple[int, int]] = []

    def unloaded(input_tokens: int, output_tokens: int) -> tuple[float, float]:
        calls.append((input_tokens, output_tokens))
        return 1.0, 1.0

    records = [rec(i, 0.0, 0.1, 1.0, output_tokens=2 + i % 3) for i in range(30)]
    run(records, unloaded=unloaded)
    assert sorted(calls) == [(100, 2), (100, 3), (100, 4)]


def test_counts_migrations_and_preemptions() -> None:
    out = run(by_reason={"rebalance": 3, "kv_pressure": 2}, preemptions=4)
    assert out["migrations"] == 5
    assert out["migrations_by_reason"] == {"kv_pressure": 2, "rebalance": 3}
    assert out["preemptions"] == 4


def test_output_tokens_cv() -> None:
    # Group 1: mean 20, population std 10 -> 0.5. Group 2: mean 0 -> 0.0. Empty group skipped.
    assert output_tokens_cv([[10, 30], [0, 0], []]) == 0.25
    assert output_tokens_cv([[5, 5, 5]]) == 0.0
    assert output_tokens_cv([]) is None
    assert output_tokens_cv([[]]) is None
    assert run(groups=[[10, 30], [2, 4, 6]])["output_tokens_cv"] == pytest.approx(
        (0.5 + math.sqrt(8 / 3) / 4) / 2
    )


def test_itl_is_pooled_and_weighted() -> None:
    itl = ItlRecorder()
    itl.add_run(0.01, 0.0, 10, 3)  # 10 steps seen by 3 requests: 30 gaps of 10 ms
    itl.add_gap(0.5)  # one gap across a preemption
    out = run(itl=itl)["itl_s"]
    expanded = np.array([0.01] * 30 + [0.5])
    assert out == {
        "mean": pytest.approx(expanded.mean()),
        "p50": float(np.percentile(expanded, 50)),
        "p90": float(np.percentile(expanded, 90)),
        "p99": float(np.percentile(expanded, 99)),
    }


def test_empty_inputs_give_nulls_not_nans() -> None:
    out = run((), groups=[])
    assert out["completed"] == 0
    assert out["unfinished"] == 0
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert out[key] == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert out["throughput"] == {"requests_per_s": None, "output_tokens_per_s": None}
    assert out["goodput_requests_per_s"] is None
    assert out["slo_attainment"] is None
    assert out["output_tokens_cv"] is None
    assert out["window_s"] == 0.0
    json.dumps(out, allow_nan=False)  # raises on NaN or infinity


def test_all_unfinished_gives_nulls_for_finished_metrics() -> None:
    out = run((rec(0, 0.0, 1.0, None, output_tokens=5, generated_tokens=2),))
    assert out["completed"] == 0
    assert out["e2e_s"]["mean"] is None  # type: ignore[index]
    assert out["ttft_s"]["mean"] == 1.0  # type: ignore[index]
    assert out["throughput"] == {"requests_per_s": None, "output_tokens_per_s": None}
    json.dumps(out, allow_nan=False)


def test_finished_without_first_token_is_a_bug() -> None:
    with pytest.raises(InvariantError):
        run((rec(0, 0.0, None, 1.0, output_tokens=1),))


@pytest.mark.parametrize(
    "kwargs", [{"scale": 0.0}, {"scale": -1.0}, {"ttft_s": 0.0}, {"tpot_s": -0.1}]
)
def test_slo_config_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        SloConfig(**kwargs)


def naive_expansion(
    runs: list[tuple[float, float, int, int]], gaps: list[float]
) -> tuple[list[float], list[int]]:
    values: list[float] = []
    weights: list[int] = []
    for first_s, slope_s, steps, weight in runs:
        if weight == 0:
            continue
        for k in range(steps):
            values.append(first_s + k * slope_s)
            weights.append(weight)
    return values + gaps, weights + [1] * len(gaps)


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
run_strategy = st.tuples(finite, finite, st.integers(0, 6), st.integers(0, 4))


@settings(max_examples=200, deadline=None)
@given(st.lists(run_strategy, max_size=8), st.lists(finite, max_size=5))
def test_itl_recorder_expansion_equals_naive(
    runs: list[tuple[float, float, int, int]], gaps: list[float]
) -> None:
    itl = ItlRecorder()
    for r in runs:
        itl.add_run(*r)
    for g in gaps:
        itl.add_gap(g)
    values, weights = itl.samples()
    expected_values, expected_weights = naive_expansion(runs, gaps)
    assert values.tolist() == expected_values
    assert weights.tolist() == expected_weights
    assert itl.num_calls == len(runs) + len(gaps)


def test_itl_recorder_allows_appends_after_samples() -> None:
    itl = ItlRecorder()
    itl.add_run(0.1, 0.0, 2, 1)
    itl.samples()
    itl.add_run(0.2, 0.0, 1, 1)
    itl.add_gap(0.3)
    assert itl.samples()[0].tolist() == [0.1, 0.1, 0.2, 0.3]


def test_itl_weights_are_integers_with_or_without_runs() -> None:
    only_gaps = ItlRecorder()
    only_gaps.add_gap(0.5)
    only_gaps.add_gap(0.25)
    values, weights = only_gaps.samples()
    assert values.tolist() == [0.5, 0.25] and weights.tolist() == [1, 1]
    assert values.dtype == np.float64 and weights.dtype == np.int64
    both = ItlRecorder()
    both.add_run(0.25, 0.5, 2, 3)  # gaps 0.25 and 0.75, each seen by 3 requests
    both.add_gap(2.0)
    values, weights = both.samples()
    assert values.tolist() == [0.25, 0.75, 2.0] and weights.tolist() == [3, 3, 1]
    assert values.dtype == np.float64 and weights.dtype == np.int64
    empty_values, empty_weights = ItlRecorder().samples()
    assert len(empty_values) == 0 and empty_weights.dtype == np.int64


def test_itl_recorder_rejects_negative_counts() -> None:
    itl = ItlRecorder()
    itl.add_run(0.1, 0.0, -1, 1)
    with pytest.raises(InvariantError):
        itl.samples()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(finite, st.integers(0, 5)), min_size=1, max_size=12).filter(
        lambda pairs: any(w > 0 for _, w in pairs)
    ),
    st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=5),
)
def test_weighted_percentile_equals_numpy_on_expansion(
    pairs: list[tuple[float, int]], qs: list[float]
) -> None:
    values = np.array([v for v, _ in pairs])
    weights = np.array([w for _, w in pairs])
    expected = np.percentile(np.repeat(values, weights), qs)
    assert weighted_percentiles(values, weights, qs) == expected.tolist()


def test_weighted_percentile_standard_quantiles() -> None:
    values, weights = [3.0, 1.0, 2.0], [3, 1, 2]
    for q in (0.0, 50.0, 90.0, 99.0, 100.0):
        assert weighted_percentiles(values, weights, [q]) == [
            float(np.percentile(np.repeat(values, weights), q))
        ]


def test_weighted_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValidationError, match=r"^percentile of an empty sample$"):
        weighted_percentiles([1.0], [0], [50.0])
    with pytest.raises(ValidationError, match=r"^percentile weights must be >= 0$"):
        weighted_percentiles([1.0], [-1], [50.0])
    with pytest.raises(ValidationError):
        weighted_percentiles([1.0], [1], [101.0])


def test_weighted_percentile_levels_do_not_depend_on_their_container() -> None:
    # 10, 50 and 90 are exact in float32 too: the 10th, 50th and 90th percentiles of {0, 1000}
    # are 100, 500 and 900 (linear method), whatever array type carries the levels.
    values, weights = [0.0, 1000.0], [1, 1]
    want = [100.0, 500.0, 900.0]
    assert weighted_percentiles(values, weights, [10.0, 50.0, 90.0]) == want
    assert weighted_percentiles(values, weights, (10, 50, 90)) == want
    assert weighted_percentiles(values, weights, np.array([10, 50, 90], np.float32)) == want


def test_distribution_of_empty_sample_is_null() -> None:
    assert distribution([]) == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert distribution([1.0, 2.0], [0, 0])["mean"] is None


def test_tpot_exactly_at_the_limit_meets_it_up_to_rounding() -> None:
    # 1.01 - 1.0 is 0.010000000000000009 in floats: within the 1e-9 relative allowance.
    r = _record(first_token_s=1.0, finish_s=1.01, output_tokens=2)
    assert _meets(r, SloConfig(ttft_s=10.0, tpot_s=0.01))


def test_an_absolute_tpot_slo_with_a_scaled_ttft_slo() -> None:
    r = _record(first_token_s=1.0, finish_s=1.5, output_tokens=2)  # TPOT 0.5 s
    slo = SloConfig(scale=1.0, tpot_s=1.0)  # TTFT scaled from the unloaded 1 s, TPOT absolute
    assert _meets(r, slo, unloaded=(1.0, 0.001))
    assert not _meets(r, SloConfig(scale=1.0), unloaded=(1.0, 0.001))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 0.0}, r"^SLO scale must be > 0, got 0.0$"),
        ({"ttft_s": -1.0}, r"^absolute TTFT SLO must be > 0 s, got -1.0$"),
        ({"tpot_s": 0.0}, r"^absolute TPOT SLO must be > 0 s, got 0.0$"),
    ],
)
def test_slo_config_messages(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SloConfig(**kwargs)


def test_negative_itl_runs_are_named() -> None:
    itl = ItlRecorder()
    itl.add_run(0.1, 0.0, -1, 1)
    with pytest.raises(InvariantError, match=r"^ITL run with negative steps or weight$"):
        itl.samples()


def _record(*, first_token_s: float, finish_s: float, output_tokens: int) -> RequestRecord:
    return RequestRecord(
        request_id=0, arrival_s=0.0, input_tokens=10, output_tokens=output_tokens,
        generated_tokens=output_tokens, first_token_s=first_token_s, finish_s=finish_s,
        instances=(0,), migrations=0, preemptions=0,
    )  # fmt: skip


def _meets(r: RequestRecord, slo: SloConfig, unloaded: tuple[float, float] = (1.0, 1.0)) -> bool:
    out = summarize(
        [r], ItlRecorder(), slo=slo, unloaded=lambda i, o: unloaded,
        output_tokens_by_group=[[1]], migrations_by_reason={}, preemptions=0, sim_wall_s=0.0,
    )  # fmt: skip
    return out["slo_attainment"] == 1.0


def test_length_classes_by_total_tokens_at_their_edges() -> None:
    assert [length_class(t) for t in (1, 2047, 2048, 8191, 8192, 32767, 32768, 10**6)] == [
        "<2K",
        "<2K",
        "2K-8K",
        "2K-8K",
        "8K-32K",
        "8K-32K",
        ">=32K",
        ">=32K",
    ]


def test_class_summaries_split_requests_by_prompt_plus_output() -> None:
    records = (
        # <2K: 1000 + 5 tokens, TTFT 1 (meets 2.0), TPOT 1 (meets 1.25): good.
        rec(0, 0.0, 1.0, 5.0, output_tokens=5, input_tokens=1000),
        # <2K: 2000 + 47 = 2047 tokens, TTFT 3 > 2: misses.
        rec(1, 0.0, 3.0, 3.0, output_tokens=47, input_tokens=2000),
        # 2K-8K: 2000 + 48 = 2048 tokens, unfinished: misses.
        rec(2, 0.0, 1.0, None, output_tokens=48, generated_tokens=3, input_tokens=2000),
        # >=32K: TTFT 0.5, one output token: good.
        rec(3, 0.0, 0.5, 0.5, output_tokens=1, input_tokens=40_000),
    )
    slo, unloaded = SloConfig(scale=10.0), constant_unloaded(0.2, 0.125)
    out = class_summaries(records, slo=slo, unloaded=unloaded)
    assert list(out) == ["<2K", "2K-8K", "8K-32K", ">=32K"]
    assert [out[c]["requests"] for c in out] == [2, 1, 0, 1]
    assert [out[c]["completed"] for c in out] == [2, 0, 0, 1]
    assert [out[c]["slo_attainment"] for c in out] == [0.5, 0.0, None, 1.0]
    assert out["<2K"]["ttft_s"]["p50"] == 2.0  # TTFTs 1 and 3
    assert out["<2K"]["e2e_s"]["mean"] == 4.0  # E2Es 5 and 3
    assert out["<2K"]["tpot_s"]["mean"] == 0.5  # TPOTs (5 - 1) / 4 = 1 and (3 - 3) / 46 = 0
    keys = {"requests", "completed", "ttft_s", "tpot_s", "e2e_s", "slo_attainment"}
    assert all(set(out[c]) == keys for c in out)
    assert out["2K-8K"]["e2e_s"]["mean"] is None  # nothing finished
    assert out["8K-32K"]["ttft_s"] == {"mean": None, "p50": None, "p90": None, "p99": None}
    # The whole run's summary carries the same table.
    whole = run(records, slo=slo, unloaded=unloaded)
    assert whole["classes"] == out
