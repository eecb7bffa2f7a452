"""Boundary rules: results stay strictly inside the neighbours, guards hold, targets are optimal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import log_uniform_summary
from l4.agents.refinement import BoundaryRule, RefinementConfig, next_boundary, split_scores
from l4.core.grid import exponential_grid
from l4.core.qoe import StageModel
from l4.core.summary import WorkloadSummary
from l4.costmodel.profile import load_profile
from l4.errors import ValidationError

PROFILE = load_profile("h100-llama-3.2-3b")
MODEL = StageModel(PROFILE)
GRID = exponential_grid(PROFILE.model.max_context_tokens)


def _summary(seed: int, n: int = 400, rate: float = 4.0) -> WorkloadSummary:
    return log_uniform_summary(GRID, seed, n, rate)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 10**6),
    st.sampled_from(list(BoundaryRule)),
    st.integers(0, 20),
    st.integers(2, 20),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_next_boundary_stays_strictly_between_neighbours_and_moves_little(
    seed: int, rule: BoundaryRule, lo: int, width: int, n_lo: int, n_hi: int, steps: int
) -> None:
    hi = min(lo + width, GRID.num_buckets)
    if hi - lo < 2:
        return
    current = (lo + hi) // 2
    config = RefinementConfig(max_grid_steps=steps, min_relative_move=0.0)
    new = next_boundary(
        _summary(seed),
        MODEL,
        rule,
        config,
        lo=lo,
        current=current,
        hi=hi,
        n_lo=n_lo,
        n_hi=n_hi,
        requests_seen=100,
    )
    assert lo < new < hi
    assert abs(new - current) <= steps


def test_low_traffic_freezes_the_boundary() -> None:
    config = RefinementConfig(freeze_min_requests=50, min_relative_move=0.0)
    kwargs = dict(lo=0, current=30, hi=GRID.num_buckets, n_lo=1, n_hi=1)
    moved = next_boundary(
        _summary(1), MODEL, BoundaryRule.COUNT, config, requests_seen=50, **kwargs
    )  # type: ignore[arg-type]
    frozen = next_boundary(
        _summary(1), MODEL, BoundaryRule.COUNT, config, requests_seen=49, **kwargs
    )  # type: ignore[arg-type]
    assert frozen == 30 and moved != 30


def test_count_rule_balances_running_requests_per_instance() -> None:
    s = _summary(2)
    cand, score = split_scores(
        s, MODEL, BoundaryRule.COUNT, lo=0, hi=GRID.num_buckets, n_lo=1, n_hi=3
    )
    best = int(cand[np.argmin(score)])
    cum = np.concatenate(([0.0], np.cumsum(s.decode_steps)))
    share_lo = cum[best] / cum[-1]
    # The best split gives the one-instance stage about a quarter of the decode steps.
    assert abs(share_lo - 0.25) < 0.1
    # Per instance on both sides: two and two split them about evenly.
    cand2, score2 = split_scores(
        s, MODEL, BoundaryRule.COUNT, lo=0, hi=GRID.num_buckets, n_lo=2, n_hi=2
    )
    assert abs(cum[int(cand2[np.argmin(score2)])] / cum[-1] - 0.5) < 0.1
    # Memory weighs long contexts more, so a quarter of it is reached at longer lengths.
    cand_m, score_m = split_scores(
        s, MODEL, BoundaryRule.MEMORY, lo=0, hi=GRID.num_buckets, n_lo=1, n_hi=3
    )
    assert int(cand_m[np.argmin(score_m)]) > best


def test_qoe_rule_picks_the_two_stage_optimum_of_the_cost_table() -> None:
    s = _summary(3)
    k = GRID.num_buckets
    costs = MODEL.cost_table(s, 4)
    cand, score = split_scores(s, MODEL, BoundaryRule.QOE, lo=0, hi=k, n_lo=2, n_hi=2)
    table = np.array([costs.cost[0, b, 1] + costs.cost[b, k, 1] for b in cand])
    finite = np.isfinite(table)
    assert finite.any()
    np.testing.assert_allclose(score[finite], table[finite], rtol=1e-9)
    jump = next_boundary(
        s,
        MODEL,
        BoundaryRule.QOE,
        RefinementConfig(),
        lo=0,
        current=1,
        hi=k,
        n_lo=2,
        n_hi=2,
        requests_seen=0,
        unlimited=True,
    )
    assert jump == int(cand[np.nanargmin(np.where(finite, table, np.inf))])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"period_s": 0.0}, r"^refinement period must be > 0 s$"),
        ({"smoothing": 0.0}, r"^refinement smoothing must lie in \(0, 1\]$"),
        ({"smoothing": 1.5}, r"^refinement smoothing must lie in \(0, 1\]$"),
        ({"freeze_min_requests": -1}, r"^refinement guards must be >= 0$"),
        ({"min_gain": -0.1}, r"^refinement guards must be >= 0$"),
        ({"min_relative_move": -0.1}, r"^refinement guards must be >= 0$"),
        ({"max_grid_steps": 0}, r"^refinement must be allowed at least one grid step per round$"),
    ],
)
def test_refinement_config_is_validated(bad: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RefinementConfig(**bad)  # type: ignore[arg-type]
    RefinementConfig(period_s=0.5, smoothing=1.0, freeze_min_requests=0, min_gain=0.0)
