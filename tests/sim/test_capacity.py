"""Capacity search: bracketing by powers of two, then geometric bisection, on hand-made probes.

Geometric bisection between 2^a and 2^(a+1) is a binary search on the exponent, so after ``i``
iterations the answer is 2^(a + m / 2^i) for the largest integer ``m`` whose point still meets the
target. The expected values below come from that closed form, not from running the search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from l4.errors import ValidationError
from l4.sim.capacity import attainment, find_capacity


class StepProbe:
    """Attainment ``high`` up to ``capacity`` (inclusive), ``low`` above it; records every call."""

    def __init__(self, capacity: float, *, high: float = 1.0, low: float = 0.0) -> None:
        self.capacity = capacity
        self.high = high
        self.low = low
        self.calls: list[float] = []

    def __call__(self, scale: float) -> Mapping[str, object]:
        self.calls.append(scale)
        value = self.high if scale <= self.capacity else self.low
        return {"slo_attainment": value, "scale": scale}


def expected_scale(capacity: float, lo_exponent: int, iterations: int) -> float:
    """The largest 2^(a + m / 2^i) <= capacity, a = ``lo_exponent``: the search's answer."""
    steps = 2**iterations
    m = math.floor((math.log2(capacity) - lo_exponent) * steps)
    return float(2 ** (lo_exponent + m / steps))


@pytest.mark.parametrize("iterations", [0, 1, 2, 6])
def test_upward_bracket_then_bisection_steps(iterations: int) -> None:
    probe = StepProbe(3.0)
    result = find_capacity(probe, target=0.9, iterations=iterations)
    # 1 and 2 meet the target, 4 does not: the bracket is [2, 4].
    assert probe.calls[:3] == [1.0, 2.0, 4.0]
    assert len(probe.calls) == 3 + iterations  # one probe per bisection step, none repeated
    assert result.rate_scale == pytest.approx(expected_scale(3.0, 1, iterations), rel=1e-12)
    assert result.summary is not None and result.summary["scale"] == result.rate_scale


def test_default_is_six_bisection_steps() -> None:
    probe = StepProbe(3.0)
    result = find_capacity(probe, target=0.9)
    assert len(probe.calls) == 9
    # log2(3) = 1.58496...: m = floor(0.58496 * 64) = 37.
    assert result.rate_scale == pytest.approx(2 ** (1 + 37 / 64), rel=1e-12)


def test_downward_bracket() -> None:
    probe = StepProbe(0.3)
    result = find_capacity(probe, target=0.9, iterations=6)
    assert probe.calls[:3] == [1.0, 0.5, 0.25]
    # log2(0.3) = -1.737: m = floor(0.263 * 64) = 16, so 2^(-2 + 16/64) = 2^-1.75.
    assert result.rate_scale == pytest.approx(2**-1.75, rel=1e-12)
    assert result.rate_scale == pytest.approx(expected_scale(0.3, -2, 6), rel=1e-12)


def test_downward_bracket_missing_only_at_one() -> None:
    # 1 misses, 0.5 meets: the bracket is [0.5, 1] without any other miss on the way down.
    probe = StepProbe(0.7)
    result = find_capacity(probe, target=0.9, iterations=6)
    assert probe.calls[:2] == [1.0, 0.5]
    assert len(probe.calls) == 2 + 6
    # log2(0.7) = -0.5146: m = floor(0.4854 * 64) = 31.
    assert result.rate_scale == pytest.approx(2 ** (-1 + 31 / 64), rel=1e-12)


def test_attainment_equal_to_the_target_counts_as_meeting_it() -> None:
    # Attainment exactly 0.9 up to 3.0, 0.89 above: ">=" keeps 0.9 on the good side.
    probe = StepProbe(3.0, high=0.9, low=0.89)
    result = find_capacity(probe, target=0.9, iterations=2)
    assert result.rate_scale == pytest.approx(expected_scale(3.0, 1, 2), rel=1e-12)
    # Strictly below the target never counts, however close.
    probe = StepProbe(3.0, high=0.8999999, low=0.0)
    assert find_capacity(probe, target=0.9).rate_scale is None


def test_every_probe_is_returned_sorted_with_its_summary() -> None:
    probe = StepProbe(3.0)
    result = find_capacity(probe, target=0.5, iterations=3)
    scales = [s for s, _ in result.probes]
    assert scales == sorted(probe.calls)
    assert all(summary["scale"] == s for s, summary in result.probes)


def test_always_meeting_the_target_stops_at_max_factor() -> None:
    probe = StepProbe(1e9)
    result = find_capacity(probe, target=1.0, max_factor=8.0)
    assert probe.calls == [1.0, 2.0, 4.0, 8.0]
    assert result.rate_scale == 8.0
    default = StepProbe(1e9)
    assert find_capacity(default, target=1.0).rate_scale == 64.0
    assert default.calls == [2.0**k for k in range(7)]


def test_never_meeting_the_target_stops_at_one_over_max_factor() -> None:
    probe = StepProbe(0.0)
    result = find_capacity(probe, target=0.5, max_factor=8.0)
    assert probe.calls == [1.0, 0.5, 0.25, 0.125]
    assert result.rate_scale is None and result.summary is None
    assert len(result.probes) == 4
    default = StepProbe(0.0)
    find_capacity(default, target=0.5)
    assert default.calls == [2.0**-k for k in range(7)]


@pytest.mark.parametrize("target", [0.0, -0.1, 1.0000001])
def test_target_outside_the_unit_interval_is_refused(target: float) -> None:
    with pytest.raises(ValidationError, match="goodput-target"):
        find_capacity(StepProbe(1.0), target=target)


def test_target_one_is_allowed() -> None:
    assert find_capacity(StepProbe(1.0), target=1.0, iterations=0).rate_scale == 1.0


def test_attainment_reads_numbers_only() -> None:
    assert attainment({"slo_attainment": 0.75}) == 0.75
    assert attainment({"slo_attainment": 1}) == 1.0
    assert attainment({"slo_attainment": None}) == 0.0
    assert attainment({"slo_attainment": "0.9"}) == 0.0
    assert attainment({}) == 0.0
