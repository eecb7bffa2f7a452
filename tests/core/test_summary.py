"""Workload summaries: prefix sums equal direct sums; kernels split exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import req
from l4.core.grid import exponential_grid
from l4.core.summary import (
    ema,
    interval_counts,
    summarize_lengths,
    summarize_requests,
    summarize_workload,
    summary_from_histogram,
)
from l4.errors import ValidationError
from l4.workload import Workload

GRID = exponential_grid(4096, substeps_per_octave=2, min_tokens=16)

requests_st = st.lists(
    st.tuples(st.integers(1, 4000), st.integers(1, 3000)), min_size=1, max_size=40
)


def _direct(reqs: list[tuple[int, int]], lo: float, hi: float) -> dict[str, float]:
    out = {"arrivals": 0.0, "tokens": 0.0, "sq": 0.0, "steps": 0.0, "lsum": 0.0}
    for p, o in reqs:
        if lo <= p < hi:
            out["arrivals"] += 1
            out["tokens"] += p
            out["sq"] += p * p
        ctx = [t for t in range(p, p + o) if lo <= t < hi]
        out["steps"] += len(ctx)
        out["lsum"] += sum(ctx)
    return out


@settings(max_examples=40, deadline=None)
@given(reqs=requests_st, data=st.data())
def test_range_table_equals_direct_sums(reqs: list[tuple[int, int]], data: st.DataObject) -> None:
    k = GRID.num_buckets
    i = data.draw(st.integers(0, k - 1))
    j = data.draw(st.integers(i + 1, k))
    duration = 10.0
    s = summarize_lengths(
        GRID,
        input_tokens=[p for p, _ in reqs],
        output_tokens=[o for _, o in reqs],
        duration_s=duration,
    )
    rt = s.ranges()
    lo = GRID.edges_tokens[i]
    hi = np.inf if j == k else GRID.edges_tokens[j]
    d = _direct(reqs, lo, hi)
    assert rt.arrival_rps[i, j] * duration == pytest.approx(d["arrivals"])
    assert rt.prompt_tokens_ps[i, j] * duration == pytest.approx(d["tokens"])
    assert rt.prompt_tokens_sq_ps[i, j] * duration == pytest.approx(d["sq"])
    assert rt.decode_steps_ps[i, j] * duration == pytest.approx(d["steps"], abs=1e-6)
    assert rt.decode_length_ps[i, j] * duration == pytest.approx(d["lsum"], abs=1e-3)
    if d["steps"]:
        assert lo <= rt.l_mean_tokens[i, j] <= rt.l_max_tokens[i, j]
        assert rt.l_max_tokens[i, j] <= max(p + o for p, o in reqs)
    # Crossings of boundary g_k: requests that decode at g_k having started below it.
    g = GRID.edges_tokens[i]
    crossing = sum(1 for p, o in reqs if p < g < p + o)
    assert rt.crossing_rps[i] * duration == pytest.approx(crossing)
    assert rt.crossing_rps[0] == 0 and rt.crossing_rps[k] == 0


@settings(max_examples=40, deadline=None)
@given(p=st.integers(0, 3000), o=st.integers(1, 3000), cut=st.floats(0, 1))
def test_interval_kernel_splits_exactly(p: int, o: int, cut: float) -> None:
    c = p + int(cut * o)
    whole = interval_counts(GRID, [p], [p + o])
    first = interval_counts(GRID, [p], [c])
    # The second window starts at the prompt only when the first one is empty.
    second = interval_counts(GRID, [c], [p + o], starts_at_prompt=[c == p])
    for w, a, b in zip(whole, first, second, strict=True):
        np.testing.assert_allclose(w, a + b, atol=1e-6)


def test_requests_window_and_rate_scaling() -> None:
    reqs = [req(0, 100, 10, 0.0), req(1, 2000, 50, 4.0)]
    s = summarize_requests(GRID, reqs)
    assert s.duration_s == 4.0 and s.num_requests == 2
    doubled = s.scaled(2.0)
    np.testing.assert_allclose(doubled.ranges().arrival_rps, 2 * s.ranges().arrival_rps)
    with pytest.raises(ValidationError):
        summarize_requests(GRID, [req(0, 100, 10, 1.0)])
    assert summarize_requests(GRID, [req(0, 100, 10, 1.0)], duration_s=2.0).duration_s == 2.0


def test_combine_and_ema_are_rate_blends() -> None:
    a = summarize_lengths(GRID, input_tokens=[100], output_tokens=[10], duration_s=1.0)
    b = summarize_lengths(GRID, input_tokens=[3000], output_tokens=[20], duration_s=2.0)
    both = a.combined(a)
    np.testing.assert_allclose(both.arrivals, 2 * a.arrivals)
    smooth = ema(a, b, 0.25)
    np.testing.assert_allclose(smooth.arrivals, 0.75 * a.arrivals + 0.25 * b.arrivals / 2.0)
    assert smooth.duration_s == 1.0


def test_summaries_on_different_grids_are_not_blended() -> None:
    a = summarize_lengths(GRID, input_tokens=[100], output_tokens=[10], duration_s=1.0)
    other = exponential_grid(4096, substeps_per_octave=1, min_tokens=16)
    b = summarize_lengths(other, input_tokens=[100], output_tokens=[10], duration_s=1.0)
    message = r"^summaries on different grids cannot be combined$"
    with pytest.raises(ValidationError, match=message):
        a.combined(b)
    with pytest.raises(ValidationError, match=message):
        ema(a, b, 0.5)


def test_a_workload_is_summarised_at_its_own_mean_rate() -> None:
    # Three requests over 2 s of arrivals, but the workload's mean rate says 0.5 rps: the window
    # is 3 / 0.5 = 6 s, not the 2 s arrival span.
    requests = (req(0, 100, 10, 0.0), req(1, 200, 20, 1.0), req(2, 300, 30, 2.0))
    workload = Workload(
        name="hand-made", source="bundled", timestamped=True, requests=requests,
        mean_rate_rps=0.5, clipped_requests=0,
    )  # fmt: skip
    s = summarize_workload(GRID, workload)
    assert s.duration_s == 6.0
    assert float(s.ranges().arrival_rps[0, GRID.num_buckets]) == pytest.approx(0.5)


def test_histogram_document_matches_requests() -> None:
    doc = {
        "format": "l4-length-histogram",
        "version": 1,
        "rate_rps": 2.0,
        "bins": [
            {"input_tokens": 100, "output_tokens": 10, "count": 3},
            {"input_tokens": 2000, "output_tokens": 50, "count": 1},
        ],
    }
    h = summary_from_histogram(GRID, doc)
    direct = summarize_lengths(
        GRID, input_tokens=[100] * 3 + [2000], output_tokens=[10] * 3 + [50], duration_s=2.0
    )
    assert h.duration_s == 2.0
    np.testing.assert_allclose(h.decode_steps, direct.decode_steps)
    np.testing.assert_allclose(h.arrivals, direct.arrivals)


@pytest.mark.parametrize(
    "doc",
    [
        {"format": "other", "version": 1, "rate_rps": 1, "bins": []},
        {"format": "l4-length-histogram", "version": 1, "rate_rps": 1, "bins": []},
        {"format": "l4-length-histogram", "version": 1, "bins": [{"input_tokens": 1}]},
        {
            "format": "l4-length-histogram",
            "version": 1,
            "bins": [{"input_tokens": 1, "output_tokens": 1, "count": 1}],
        },
    ],
)
def test_bad_histograms_raise(doc: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        summary_from_histogram(GRID, doc)


def test_arrival_batch_excess_measures_groups_of_simultaneous_arrivals() -> None:
    from l4.core.summary import arrival_batch_excess

    assert arrival_batch_excess([0.0, 1.0, 2.0, 3.5]) == 0.0  # nobody arrives together
    # groups of 3 and 1: E[X^2]/E[X] - 1 = (9 + 1) / 4 - 1
    assert arrival_batch_excess([5.0, 0.0, 0.0, 0.0]) == pytest.approx(1.5)
    assert arrival_batch_excess([0.0, 0.0004, 0.0008, 1.0], together_s=1e-3) == pytest.approx(1.5)


def test_simultaneous_arrivals_raise_the_predicted_ttft_of_small_stages_only() -> None:
    from dataclasses import replace

    from l4.core.qoe import StageModel
    from l4.costmodel import load_profile

    profile = load_profile("h100-llama-3.2-3b")
    grid = exponential_grid(profile.model.max_context_tokens)
    rng = np.random.default_rng(1)
    base = summarize_lengths(
        grid,
        input_tokens=rng.integers(500, 4000, 400),
        output_tokens=rng.integers(10, 300, 400),
        duration_s=200.0,
    )
    bursty = replace(base, arrival_batch_excess=6.0)
    k = grid.num_buckets
    calm = StageModel(profile).cost_table(base, 16).ttft_s[0, k]
    burst = StageModel(profile).cost_table(bursty, 16).ttft_s[0, k]
    assert burst[0] > calm[0] * 1.5  # one instance: the group queues
    assert burst[15] == pytest.approx(calm[15])  # 16 instances absorb groups of ~7


def _histogram(**extra: object) -> dict[str, object]:
    return {
        "format": "l4-length-histogram",
        "version": 1,
        "bins": [
            {"input_tokens": 100, "output_tokens": 10, "count": 3},
            {"input_tokens": 2000, "output_tokens": 50, "count": 1},
        ],
        **extra,
    }


def test_a_histogram_over_a_window_and_its_batch_excess() -> None:
    h = summary_from_histogram(GRID, _histogram(duration_s=8.0, arrival_batch_excess=1.5))
    assert h.duration_s == 8.0 and h.arrival_batch_excess == 1.5
    assert summary_from_histogram(GRID, _histogram(rate_rps=2.0)).arrival_batch_excess == 0.0


@pytest.mark.parametrize(
    ("extra", "bins", "message"),
    [
        ({"rate_rps": 1.0}, [{"input_tokens": 1, "output_tokens": 1, "count": -1}], "counts >= 0"),
        ({"rate_rps": 1.0}, [{"input_tokens": 1, "output_tokens": 1, "count": 0}], "some > 0"),
        ({"rate_rps": 1.0}, [{"input_tokens": -1, "output_tokens": 1, "count": 1}], "counts >= 0"),
        ({"rate_rps": 1.0}, [{"input_tokens": 1, "output_tokens": 0, "count": 1}], "output_tokens"),
        ({"rate_rps": 1.0, "duration_s": 2.0}, None, 'exactly one of "rate_rps" and "duration_s"'),
        ({"rate_rps": 0.0}, None, r"^histogram rate_rps / duration_s must be > 0$"),
        ({"duration_s": float("inf")}, None, r"^histogram rate_rps / duration_s must be > 0$"),
        (
            {"rate_rps": 1.0, "arrival_batch_excess": -1.0},
            None,
            r"^histogram arrival_batch_excess must be a number >= 0$",
        ),
    ],
)
def test_bad_histogram_values_are_refused_with_the_reason(
    extra: dict[str, object], bins: list[dict[str, float]] | None, message: str
) -> None:
    doc = _histogram(**extra)
    if bins is not None:
        doc["bins"] = bins
    with pytest.raises(ValidationError, match=message):
        summary_from_histogram(GRID, doc)


def test_fewer_than_two_arrivals_have_no_batch_excess() -> None:
    from l4.core.summary import arrival_batch_excess

    assert arrival_batch_excess([]) == 0.0 and arrival_batch_excess([3.0]) == 0.0
    assert arrival_batch_excess([3.0, 3.0]) == 1.0  # one group of 2: 4 / 2 - 1


def test_range_means_need_decode_steps_not_a_step_per_second() -> None:
    # One request of 4 output tokens counts 4 steps at contexts 100..103 over a 10 s window:
    # 0.4 steps/s, yet its range's mean context is 101.5, not the range's lower edge; a range
    # without any decode step takes its lower edge.
    s = summarize_lengths(GRID, input_tokens=[100], output_tokens=[4], duration_s=10.0)
    rt = s.ranges()
    k = GRID.num_buckets
    i = int(GRID.bucket_of([100])[0])
    assert rt.decode_steps_ps[i, i + 1] == pytest.approx(0.4)
    assert rt.l_mean_tokens[i, i + 1] == pytest.approx(101.5)
    assert rt.l_mean_tokens[0, 1] == rt.bounds_tokens[0]
    assert np.isfinite(rt.l_mean_tokens[np.triu_indices(k + 1, 1)]).all()


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ([1, 2], [1], "must be 1-d of equal length"),
        ([[1, 2]], [[1, 2]], "must be 1-d of equal length"),
        ([-1], [1], "token counts must be >= 0"),
        ([1], [-1], "token counts must be >= 0"),
    ],
)
def test_summarize_lengths_refuses_bad_arrays(
    inputs: list[object], outputs: list[object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        summarize_lengths(GRID, input_tokens=inputs, output_tokens=outputs, duration_s=1.0)


def test_a_request_without_output_arrives_but_never_decodes() -> None:
    s = summarize_lengths(GRID, input_tokens=[100], output_tokens=[0], duration_s=1.0)
    assert s.arrivals.sum() == 1.0 and s.decode_steps.sum() == 0.0


def _spread_of(times: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    from l4.core.summary import arrival_spread

    return arrival_spread(GRID, times, prompts, window_s=1.0, block_windows=10)


def test_poisson_arrivals_have_no_spread_and_bunched_ones_do() -> None:
    rng = np.random.default_rng(3)
    n = 20_000  # ~50 per second over 400 s
    times = np.sort(rng.uniform(0.0, 400.0, n))
    prompts = rng.choice([100, 1000, 3000], n)
    calm = _spread_of(times, prompts)
    # The whole stream's index of dispersion less one: sampling noise around 0 for Poisson.
    assert abs(calm.sum()) < 0.15
    # The same arrivals gathered into bursts of 1 s every 5 s: each window holds 0 or ~5x mean.
    bursty = np.floor(times / 5.0) * 5.0 + (times % 1.0)
    spread = _spread_of(bursty, prompts)
    assert spread.sum() > 100 * abs(calm.sum()) + 5.0
    # The range sums of the range table are the block sums of the matrix.
    from dataclasses import replace

    summary = replace(
        summarize_lengths(
            GRID, input_tokens=prompts, output_tokens=np.full(n, 10), duration_s=400.0
        ),
        arrival_spread=spread,
    )
    rt = summary.ranges()
    k = GRID.num_buckets
    for i, j in ((0, k), (2, 5), (5, 9), (9, k)):
        assert rt.spread_excess[i, j] == pytest.approx(spread[i:j, i:j].sum())


def test_a_slow_drift_of_the_rate_is_not_spread() -> None:
    # 20 s at 10 per second, then 20 s at 40 per second, evenly spaced: no bursts, only a
    # step between two 10 s blocks, which re-planning follows.
    times = np.concatenate([np.arange(0.0, 20.0, 0.1), np.arange(20.0, 40.0, 0.025)])
    prompts = np.full(times.size, 500)
    spread = _spread_of(times, prompts)
    assert spread.sum() < 0.0  # below Poisson: evenly spaced arrivals vary less
    assert summarize_requests(GRID, [req(i, 500, 10, float(t)) for i, t in enumerate(times)]) \
        .arrival_spread is not None  # fmt: skip


def test_bunched_arrivals_raise_the_cost_of_a_small_busy_stage_most() -> None:
    from dataclasses import replace

    from l4.core.objective import SloObjective
    from l4.core.qoe import StageModel
    from l4.costmodel import load_profile

    profile = load_profile("h100-llama-3.2-3b")
    grid = exponential_grid(profile.model.max_context_tokens)
    rng = np.random.default_rng(1)
    base = summarize_lengths(
        grid,
        input_tokens=rng.integers(3000, 5000, 600),
        output_tokens=rng.integers(40, 100, 600),
        duration_s=30.0,  # 20 prompts of ~4K per second: half of 2 instances' GPU time
    )
    k = grid.num_buckets
    # All the stream's excess in its own buckets: an index of dispersion of 5 at 4 s windows.
    spread = np.zeros((k, k))
    occupied = np.flatnonzero(base.arrivals)
    spread[np.ix_(occupied, occupied)] = 4.0 / occupied.size**2
    bursty = replace(base, arrival_spread=spread)
    model = StageModel(profile, objective=SloObjective())
    calm = model.cost_table(base, 8).cost[0, k]
    burst = model.cost_table(bursty, 8).cost[0, k]
    assert burst[1] > 10 * calm[1]  # two instances: a burst overloads them
    assert burst[7] < 1.5 * calm[7]  # eight absorb it
    # Without the objective's spread, or without a measured spread, nothing changes.
    plain = StageModel(profile, objective=SloObjective(rate_spread=False))
    assert np.allclose(plain.cost_table(bursty, 8).cost[0, k], calm)
