"""The SLO objective: finite under overload, misses priced on top of latency, one stage unless
staging pays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import log_uniform_summary
from l4.core.choice import plan_with_margin, prefer_one_stage
from l4.core.grid import exponential_grid
from l4.core.objective import SloObjective
from l4.core.planner import plan_stages
from l4.core.qoe import StageCosts, StageModel
from l4.core.summary import summarize_lengths
from l4.costmodel import StepCostModel, load_profile
from l4.errors import ValidationError

H100 = load_profile("h100-llama-3.2-3b")
GRID = exponential_grid(H100.model.max_context_tokens)
PLAIN = StageModel(H100)
SLO = StageModel(H100, objective=SloObjective())


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([0.5, 4.0, 40.0]))
def test_slo_costs_are_finite_and_never_below_the_latency_cost(seed: int, rate: float) -> None:
    summary = log_uniform_summary(GRID, seed, n=300, rate=rate)
    plain = PLAIN.cost_table(summary, 6)
    slo = SLO.cost_table(summary, 6)
    upper = np.triu(np.ones(plain.cost.shape[:2], dtype=bool), k=1)
    assert np.all(np.isfinite(slo.cost[upper]))
    feasible = np.isfinite(plain.cost)
    # Misses and tails only add; the predictions themselves are the same model.
    assert np.all(slo.cost[feasible] >= plain.cost[feasible] * (1 - 1e-12))
    same = np.isfinite(plain.ttft_s)
    assert np.allclose(slo.ttft_s[same], plain.ttft_s[same])


def test_an_idle_stage_costs_its_latency_only() -> None:
    # A trickle of 500-token prompts on 8 instances: nobody waits, nobody misses.
    summary = summarize_lengths(
        GRID, input_tokens=np.full(20, 500), output_tokens=np.full(20, 50), duration_s=100.0
    )
    rt = summary.ranges(SLO.lmax_quantile)
    k = GRID.num_buckets
    slo_cost = SLO.stage_costs(rt, [0], [k], 8)[0][0]
    plain_cost = PLAIN.stage_costs(rt, [0], [k], 8)[0][0]
    assert slo_cost == pytest.approx(plain_cost, rel=1e-3)


def test_a_prompt_whose_own_prefill_exceeds_its_slo_always_misses() -> None:
    # With slo_scale 1, a request's TTFT SLO is its unloaded TTFT: the model's own prefill
    # (chunks riding on decode steps) is a little longer, so every request misses.
    tight = StageModel(H100, objective=SloObjective(slo_scale=1.0, tail_cost_s=0.0))
    summary = summarize_lengths(
        GRID, input_tokens=np.full(10, 3000), output_tokens=np.zeros(10), duration_s=10.0
    )
    rt = summary.ranges(tight.lmax_quantile)
    k = GRID.num_buckets
    latency = PLAIN.stage_costs(rt, [0], [k], 1)[0][0]
    cost = tight.stage_costs(rt, [0], [k], 1)[0][0]
    # One request per second arrives and misses; no decode steps, so no TPOT term.
    assert cost - latency == pytest.approx(100.0 * 1.0, rel=1e-9)


def test_overload_is_ranked_not_refused() -> None:
    summary = log_uniform_summary(GRID, seed=2, n=400, rate=400.0)  # far past 4 instances
    plain = PLAIN.cost_table(summary, 4)
    assert not np.isfinite(plain.cost[0, GRID.num_buckets, 3])
    plan = plan_with_margin(summary, SLO, 4, margin=0.0)
    assert math.isfinite(plan.cost) and plan.num_instances == 4
    # More instances for the same overload: predicted to degrade less.
    more = plan_with_margin(summary, SLO, 8, margin=0.0)
    assert more.cost < plan.cost


def test_a_stage_s_slo_cost_does_not_depend_on_the_stages_priced_with_it() -> None:
    # Every prompt bucket's misses count in the stage that holds it, and only there.
    summary = log_uniform_summary(GRID, seed=3, n=300, rate=4.0)
    rt = summary.ranges(SLO.lmax_quantile)
    k = GRID.num_buckets
    mid = k // 2
    assert rt.arrival_rps[0, mid] > 0 and rt.arrival_rps[mid, k] > 0
    together = SLO.stage_costs(rt, [0, mid], [mid, k], 2)[0]
    alone = [SLO.stage_costs(rt, [lo], [hi], 2)[0][0] for lo, hi in ((0, mid), (mid, k))]
    assert together.tolist() == pytest.approx(alone, rel=1e-12)


def test_a_staged_plan_short_of_the_margin_falls_back_to_one_stage() -> None:
    summary = log_uniform_summary(GRID, seed=1, n=300, rate=4.0)
    staged = plan_stages(summary, PLAIN, 4, timer=lambda: 0.0)
    k = GRID.num_buckets
    cost, ttft, tpot, _ = PLAIN.stage_prediction(summary.ranges(PLAIN.lmax_quantile), [0], [k], 4)
    # Three stages, cheaper than one stage of all four instances but by less than 90%.
    assert len(staged.stages) == 3 and cost[0] * 0.1 <= staged.cost < cost[0]
    readings = iter([1.0, 1.5, 10.0, 10.25])  # plan_stages' two readings, then the comparison's
    plan = plan_with_margin(summary, PLAIN, 4, margin=0.9, timer=lambda: next(readings))
    assert [(s.lo_tokens, s.hi_tokens, s.num_instances) for s in plan.stages] == [(0, None, 4)]
    assert (plan.cost, plan.stages[0].cost) == (cost[0], cost[0])
    assert (plan.stages[0].ttft_s, plan.stages[0].tpot_s) == (ttft[0], tpot[0])
    assert plan.feasible and plan.planning_time_s == 0.75  # 0.5 s planning + 0.25 s comparing
    # Without a margin the staged plan stands.
    assert plan_with_margin(summary, PLAIN, 4, margin=0.0).stages == staged.stages


def _table(one: float, staged: tuple[float, float]) -> StageCosts:
    k1, e = 3, 2
    cost = np.full((k1, k1, e), np.inf)
    cost[0, 2, 1] = one  # one stage of both instances
    cost[0, 1, 0], cost[1, 2, 0] = staged  # two stages of one instance each
    return StageCosts(cost=cost, ttft_s=cost.copy(), tpot_s=cost.copy(), load=cost.copy())


def test_one_stage_wins_unless_staging_saves_the_margin() -> None:
    grid = exponential_grid(2048, substeps_per_octave=1, min_tokens=1024)  # 2 buckets
    staged = [(0, 1, 1), (1, 2, 1)]
    # Staging predicted at 9.6 against 10: saves 4%, below a 5% margin.
    cost, segs = prefer_one_stage(_table(10.0, (4.8, 4.8)), grid, staged, 9.6, margin=0.05)
    assert (cost, segs) == (10.0, [(0, 2, 2)])
    # Saving 6% clears it.
    cost, segs = prefer_one_stage(_table(10.0, (4.7, 4.7)), grid, staged, 9.4, margin=0.05)
    assert (cost, segs) == (9.4, staged)
    # No margin: the DP's plan whenever it is cheaper.
    assert prefer_one_stage(_table(10.0, (4.8, 4.8)), grid, staged, 9.6, margin=0.0)[1] == staged
    with pytest.raises(ValidationError):
        prefer_one_stage(_table(1.0, (1.0, 1.0)), grid, staged, 2.0, margin=1.0)


def test_the_unloaded_ttft_is_the_simulator_s_slo_reference() -> None:
    step = StepCostModel(H100)
    budget = SLO.instance.max_num_batched_tokens
    for p in (1, 100, 2048, 2049, 30_000):
        assert SLO._unloaded_ttft_s(p) == step.unloaded_latency_s(p, 1, budget)[0]
