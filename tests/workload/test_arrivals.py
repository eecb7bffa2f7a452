"""Arrival processes, cutting and clipping as pure functions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from l4.workload.arrivals import (
    clip_lengths,
    cut_length,
    gamma_arrivals,
    mean_rate_rps,
    rescale,
    rotate,
)


def cv(arrivals: np.ndarray) -> float:
    gaps = np.diff(arrivals)
    return float(gaps.std() / gaps.mean())


def test_poisson_mean_rate_and_cv() -> None:
    arrivals = gamma_arrivals(20_000, rate_rps=8.0, shape=1.0, seed=1)
    # The rate estimate n / T has relative std 1/sqrt(n) ~ 0.7 %.
    assert mean_rate_rps(arrivals) == pytest.approx(8.0, rel=0.03)
    assert cv(arrivals) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("shape", [0.25, 4.0])
def test_gamma_shape_sets_cv_not_rate(shape: float) -> None:
    arrivals = gamma_arrivals(20_000, rate_rps=3.0, shape=shape, seed=2)
    assert mean_rate_rps(arrivals) == pytest.approx(3.0, rel=0.05)
    assert cv(arrivals) == pytest.approx(1 / np.sqrt(shape), rel=0.1)


def test_burstier_shape_raises_cv() -> None:
    poisson = gamma_arrivals(20_000, rate_rps=5.0, shape=1.0, seed=3)
    bursty = gamma_arrivals(20_000, rate_rps=5.0, shape=0.2, seed=3)
    assert cv(bursty) > 1.5 * cv(poisson)


def test_same_seed_same_arrivals() -> None:
    a = gamma_arrivals(100, rate_rps=1.0, shape=0.5, seed=7)
    b = gamma_arrivals(100, rate_rps=1.0, shape=0.5, seed=7)
    c = gamma_arrivals(100, rate_rps=1.0, shape=0.5, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_rescale_hits_rate_and_scale_multiplies() -> None:
    raw = np.array([100.0, 101.0, 101.0, 105.0, 130.0])
    base = rescale(raw, rate_rps=None, rate_scale=None)
    assert base.tolist() == [0.0, 1.0, 1.0, 5.0, 30.0]
    to_rate = rescale(raw, rate_rps=2.0, rate_scale=None)
    assert mean_rate_rps(to_rate) == pytest.approx(2.0)
    both = rescale(raw, rate_rps=2.0, rate_scale=3.0)
    assert mean_rate_rps(both) == pytest.approx(6.0)
    # Shape of the trace is kept: gaps are proportional.
    assert np.allclose(np.diff(both) / np.diff(both).sum(), np.diff(base) / np.diff(base).sum())


def test_mean_rate_of_degenerate_spans() -> None:
    assert mean_rate_rps(np.array([0.0, 0.0])) == 0.0
    assert mean_rate_rps(np.array([], dtype=np.float64)) == 0.0


def test_clip_lengths_counts_changed_requests() -> None:
    inputs = np.array([10, 99, 100, 150, 50, 60], dtype=np.int64)
    outputs = np.array([5, 5, 1, 7, 50, 41], dtype=np.int64)
    new_in, new_out, changed = clip_lengths(inputs, outputs, max_context_tokens=100)
    assert new_in.tolist() == [10, 99, 99, 99, 50, 60]
    assert new_out.tolist() == [5, 1, 1, 1, 50, 40]
    assert changed == 4
    assert np.all(new_in + new_out <= 100) and np.all(new_out >= 1)


sorted_arrivals = st.lists(
    st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=200
).map(lambda xs: np.array(sorted(xs), dtype=np.float64))


@given(
    arrivals=sorted_arrivals,
    duration=st.none() | st.floats(min_value=1e-6, max_value=2e4),
    count=st.none() | st.integers(min_value=1, max_value=300),
)
def test_cut_keeps_a_prefix_below_duration(
    arrivals: np.ndarray, duration: float | None, count: int | None
) -> None:
    keep = cut_length(arrivals, duration_s=duration, num_requests=count)
    kept = arrivals[:keep]
    assert 0 <= keep <= len(arrivals)
    if count is not None:
        assert keep <= count
    if duration is not None:
        assert np.all(kept < duration)
        # Maximal: the next request (if any, and if the count allows it) is at or past duration.
        if keep < len(arrivals) and (count is None or keep < count):
            assert arrivals[keep] >= duration
    elif count is not None:
        assert keep == min(count, len(arrivals))


@given(
    gaps=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=40),
    offset=st.floats(0.0, 1000.0),
)
def test_rotate_is_a_wrapped_window(gaps: list[float], offset: float) -> None:
    times = np.cumsum([0.0, *gaps]) + 5.0
    shifted, order = rotate(times, offset)
    # A permutation that keeps the trace's cyclic order, from 0 and never going back in time.
    assert sorted(order.tolist()) == list(range(len(times)))
    start = int(order[0])
    assert order.tolist() == [*range(start, len(times)), *range(start)]
    assert shifted[0] == 0.0 and bool(np.all(np.diff(shifted) >= -1e-9))
    # Gaps inside the trace are kept; the wrap adds one mean gap.
    inner = [i for i in range(1, len(order)) if order[i] == order[i - 1] + 1]
    for i in inner:
        assert shifted[i] - shifted[i - 1] == pytest.approx(
            times[order[i]] - times[order[i - 1]], abs=1e-9
        )


def test_rotate_by_zero_or_a_period_is_the_identity() -> None:
    times = np.array([2.0, 3.0, 3.0, 7.0])
    period = 5.0 * 4 / 3  # span plus one mean gap
    for offset in (0.0, period, 2 * period):
        shifted, order = rotate(times, offset)
        assert order.tolist() == [0, 1, 2, 3]
        assert shifted == pytest.approx([0.0, 1.0, 1.0, 5.0])


def test_rotate_wraps_with_one_mean_gap() -> None:
    shifted, order = rotate(np.array([0.0, 1.0, 4.0]), 2.0)  # period 6
    assert order.tolist() == [2, 0, 1]
    assert shifted == pytest.approx([0.0, 2.0, 3.0])
