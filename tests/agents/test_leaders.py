"""Leaders' and coordinator's decisions: reports add up, the plan in force is costed like a new
one, and a re-plan is proposed only when it is predicted to be better."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import log_uniform_summary
from l4.agents.leaders import (
    boundary_target,
    combine_reports,
    length_report,
    plan_cost,
    propose_plan,
    stage_indices,
)
from l4.agents.refinement import BoundaryRule, RefinementConfig, next_boundary
from l4.agents.stages import StageTable
from l4.core.grid import exponential_grid
from l4.core.planner import plan_from_costs, plan_stages
from l4.core.qoe import StageModel
from l4.core.summary import WorkloadSummary
from l4.costmodel.profile import load_profile

PROFILE = load_profile("h100-llama-3.2-3b")
MODEL = StageModel(PROFILE)
GRID = exponential_grid(PROFILE.model.max_context_tokens)


def _summary(seed: int, n: int = 400, rate: float = 4.0) -> WorkloadSummary:
    return log_uniform_summary(GRID, seed, n, rate)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=4), st.floats(0.0, 3.0))
def test_combined_reports_are_the_sum_of_rates(seeds: list[int], excess: float) -> None:
    parts = [_summary(s, n=50 + 10 * i) for i, s in enumerate(seeds)]
    reports = [
        length_report(p, sender=i, stage=0, requests_seen=10, now_s=1.0)
        for i, p in enumerate(parts)
    ]
    combined = combine_reports(GRID, reports, arrival_batch_excess=excess)
    assert combined is not None and combined.duration_s == 1.0
    for name in ("arrivals", "prompt_tokens", "decode_steps", "decode_length_sum"):
        expected = sum(getattr(p, name) / p.duration_s for p in parts)
        assert np.allclose(getattr(combined, name), expected)
    # A request enters the cluster in bucket 0; it never crosses into it.
    assert combined.crossings[0] == 0.0
    assert np.allclose(combined.crossings[1:], sum(p.crossings[1:] / p.duration_s for p in parts))
    assert combined.max_length_tokens == max(p.max_length_tokens for p in parts)
    assert combined.arrival_batch_excess == excess
    assert combine_reports(GRID, [], arrival_batch_excess=excess) is None


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 12))
def test_the_dp_plan_costs_what_the_dp_says_and_is_not_replaced(seed: int, n: int) -> None:
    summary = _summary(seed, rate=1.0)
    plan = plan_stages(summary, MODEL, n)
    if not plan.feasible:
        return
    table = StageTable.from_plan(plan)
    costs = MODEL.cost_table(summary, n)
    assert plan_cost(costs, GRID, table) == pytest.approx(plan.cost, rel=1e-9)
    # Nothing beats the optimum, so the coordinator leaves it in force even with no margin.
    assert propose_plan(summary, MODEL, table, min_gain=0.0, sender=0) is None


def test_a_worse_table_is_replaced_by_the_dp_plan_when_the_gain_clears_the_margin() -> None:
    summary = _summary(3, rate=1.0)
    n = 8
    single = StageTable.single(n)
    costs = MODEL.cost_table(summary, n)
    best, segments, feasible = plan_from_costs(GRID, costs)
    current = plan_cost(costs, GRID, single)
    assert feasible and len(segments) > 1 and best < current
    gain = 1.0 - best / current
    update = propose_plan(summary, MODEL, single, min_gain=gain * 0.9, sender=5)
    assert update is not None
    assert update.version == single.version + 1 and update.sender == 5
    assert len(update.boundaries_tokens) == len(segments) - 1
    counts = [update.stage_of_instance.count(s) for s in range(len(segments))]
    assert counts == [m for _, _, m in segments]
    assert propose_plan(summary, MODEL, single, min_gain=min(gain * 1.1, 0.99), sender=5) is None


def test_boundary_target_leaves_boundaries_without_room_on_the_grid_alone() -> None:
    summary = _summary(1)
    # Set by hand inside one grid step (64..76 tokens): no candidate lies between them.
    cramped = StageTable(boundaries_tokens=(65, 70), stage_of_instance=(0, 1, 2))
    assert stage_indices(GRID, cramped, 1) == (2, 2)
    roomy = StageTable(
        boundaries_tokens=(GRID.edges_tokens[10], GRID.edges_tokens[20]),
        stage_of_instance=(0, 1, 2),
    )
    for table, k, expect_none in ((cramped, 1, True), (cramped, 2, True), (roomy, 1, False)):
        target = boundary_target(
            summary,
            MODEL,
            table,
            k,
            rule=BoundaryRule.COUNT,
            config=RefinementConfig(),
            requests_seen=1000,
            unlimited=True,
        )
        assert (target is None) is expect_none
        if target is not None:
            assert 0 < target < 20


def test_a_length_report_carries_its_sender_stage_count_and_time() -> None:
    summary = _summary(2)
    report = length_report(summary, sender=3, stage=1, requests_seen=17, now_s=4.5)
    assert (report.sender, report.stage, report.requests_seen, report.sent_s) == (3, 1, 17, 4.5)
    assert report.max_length_tokens == summary.max_length_tokens
    assert np.allclose(report.arrivals, summary.arrivals / summary.duration_s)


@pytest.mark.parametrize("rule", list(BoundaryRule))
@pytest.mark.parametrize(("seen", "unlimited"), [(0, False), (0, True), (1000, False)])
def test_boundary_target_is_the_rules_next_boundary_for_the_stage_pair(
    rule: BoundaryRule, seen: int, unlimited: bool
) -> None:
    summary = _summary(4)
    table = StageTable(
        boundaries_tokens=(GRID.edges_tokens[10], GRID.edges_tokens[20]),
        stage_of_instance=(0, 1, 1, 2),
    )
    config = RefinementConfig(min_relative_move=0.0)
    got = boundary_target(
        summary, MODEL, table, 2, rule=rule, config=config, requests_seen=seen, unlimited=unlimited
    )
    expected = next_boundary(
        summary, MODEL, rule, config, lo=10, current=20, hi=GRID.num_buckets, n_lo=2, n_hi=1,
        requests_seen=seen, unlimited=unlimited,
    )  # fmt: skip
    assert got == expected
    if seen == 0 and not unlimited:
        assert got == 20  # frozen: too few requests seen


def test_boundary_target_defaults_to_one_round_of_refinement() -> None:
    summary = _summary(4)
    table = StageTable(boundaries_tokens=(GRID.edges_tokens[10],), stage_of_instance=(0, 1))
    config = RefinementConfig(min_relative_move=0.0)
    one_round = boundary_target(
        summary, MODEL, table, 1, rule=BoundaryRule.COUNT, config=config, requests_seen=1000
    )
    straight = boundary_target(
        summary, MODEL, table, 1, rule=BoundaryRule.COUNT, config=config, requests_seen=1000,
        unlimited=True,
    )  # fmt: skip
    assert one_round is not None and straight is not None
    assert abs(one_round - 10) <= 1 and abs(straight - 10) > 1  # one grid step vs the target
