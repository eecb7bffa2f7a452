"""DP planner: equals brute force, well-formed plans, greedy merge."""

from __future__ import annotations

import itertools
from typing import NoReturn

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import tiny_profile
from l4.core.grid import exponential_grid
from l4.core.migration import MigrationModel
from l4.core.planner import (
    EXACT_MAX_INSTANCES,
    MAX_PLAN_INSTANCES,
    Plan,
    brute_force,
    check_fleet_size,
    merge_greedy,
    plan_from_costs,
    plan_stages,
    solve_dp,
)
from l4.core.qoe import StageCosts, StageModel
from l4.core.search import block_size
from l4.core.summary import WorkloadSummary, summarize_lengths
from l4.costmodel import load_profile
from l4.errors import ValidationError

TINY_GRID = exponential_grid(2048, substeps_per_octave=1, min_tokens=64)  # 6 buckets


@st.composite
def cost_tables(draw: st.DrawFn) -> np.ndarray:
    k1 = draw(st.integers(2, 6))
    e = draw(st.integers(1, 5))
    values = draw(
        st.lists(
            st.one_of(st.floats(0, 100, allow_nan=False), st.just(np.inf)),
            min_size=k1 * k1 * e,
            max_size=k1 * k1 * e,
        )
    )
    table = np.array(values, dtype=np.float64).reshape(k1, k1, e)
    table[np.tril_indices(k1)] = np.inf
    return table


@settings(max_examples=150, deadline=None)
@given(table=cost_tables())
def test_dp_equals_brute_force_on_random_tables(table: np.ndarray) -> None:
    dp_cost, dp_segs = solve_dp(table)
    bf_cost, _ = brute_force(table)
    assert dp_cost == pytest.approx(bf_cost) or (np.isinf(dp_cost) and np.isinf(bf_cost))
    if np.isfinite(dp_cost):
        assert sum(table[i, j, n - 1] for i, j, n in dp_segs) == pytest.approx(dp_cost)
        _check_segments(dp_segs, table.shape[0] - 1, table.shape[2])


def _check_segments(segs: list[tuple[int, int, int]], k: int, e: int) -> None:
    assert segs[0][0] == 0 and segs[-1][1] == k
    assert all(a[1] == b[0] for a, b in itertools.pairwise(segs))
    assert all(i < j for i, j, _ in segs)
    assert all(n >= 1 for *_, n in segs) and sum(n for *_, n in segs) == e


def _tiny_stage_model(
    reqs: list[tuple[int, int]], rate: float, mechanism: str
) -> tuple[WorkloadSummary, StageModel]:
    """(prompt, output) pairs at ``rate`` on the tiny grid, and the tiny profile's stage model."""
    s = summarize_lengths(
        TINY_GRID,
        input_tokens=[p for p, _ in reqs],
        output_tokens=[o for _, o in reqs],
        duration_s=len(reqs) / rate,
    )
    return s, StageModel(tiny_profile(), migration=MigrationModel(mechanism=mechanism))


workloads = st.lists(st.tuples(st.integers(1, 1800), st.integers(1, 240)), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(
    reqs=workloads,
    rate=st.floats(0.1, 400.0),
    e=st.integers(1, 5),
    mechanism=st.sampled_from(["kv-transfer", "replay"]),
)
def test_plans_of_the_stage_model_match_brute_force(
    reqs: list[tuple[int, int]], rate: float, e: int, mechanism: str
) -> None:
    s, model = _tiny_stage_model(reqs, rate, mechanism)
    costs = model.cost_table(s, e)
    bf_cost, _ = brute_force(costs.cost)
    plan = plan_stages(s, model, e, timer=lambda: 0.0)
    assert plan.planning_time_s == 0.0
    assert plan.feasible == bool(np.isfinite(bf_cost))
    if plan.feasible:
        # Merging keeps the optimum: it only joins stages when the cost does not rise.
        assert plan.cost == pytest.approx(bf_cost, rel=1e-9, abs=1e-12)
    else:
        assert plan.cost == np.inf
    stages = plan.stages
    assert stages[0].lo_tokens == 0 and stages[-1].hi_tokens is None
    bounds = [st_.lo_tokens for st_ in stages]
    assert all(a < b for a, b in itertools.pairwise(bounds))
    assert all(s_.hi_tokens == t.lo_tokens for s_, t in itertools.pairwise(stages))
    assert all(s_.num_instances >= 1 for s_ in stages) and plan.num_instances == e
    if e == 1:
        assert len(stages) == 1


def test_single_instance_plan_is_one_open_stage() -> None:
    s = summarize_lengths(TINY_GRID, input_tokens=[100, 900], output_tokens=[50, 50], duration_s=1)
    plan = plan_stages(s, StageModel(tiny_profile()), 1)
    assert len(plan.stages) == 1
    only = plan.stages[0]
    assert (only.lo_tokens, only.hi_tokens, only.num_instances) == (0, None, 1)
    assert plan.stage_of(0) == 0 and plan.stage_of(10**9) == 0


def test_merge_joins_equal_cost_neighbours_only() -> None:
    table = np.full((4, 4, 3), np.inf)
    table[0, 1, 0] = 1.0
    table[1, 2, 0] = 1.0
    table[0, 2, 1] = 2.0  # joining the first two costs the same: merge
    table[2, 3, 0] = 1.0
    table[0, 3, 2] = 5.0  # joining everything would raise the cost: keep
    segs = merge_greedy(table, [(0, 1, 1), (1, 2, 1), (2, 3, 1)])
    assert segs == [(0, 2, 2), (2, 3, 1)]


def test_mooncake_plan_is_length_ordered_and_uses_every_instance() -> None:
    from l4.core.summary import summarize_workload
    from l4.workload import WorkloadSpec, build_workload

    profile = load_profile("h100-llama-3.2-3b")
    workload = build_workload(
        WorkloadSpec(trace="mooncake", max_context_tokens=131072, num_requests=3000)
    )
    s = summarize_workload(exponential_grid(131072), workload)
    plan = plan_stages(s, StageModel(profile), 16)
    assert plan.feasible and plan.num_instances == 16 and len(plan.stages) >= 2
    # Longer stages are slower per token.
    tpots = [st_.tpot_s for st_ in plan.stages]
    assert tpots[-1] > tpots[0]


def test_planning_time_is_read_from_the_injected_timer() -> None:
    s = summarize_lengths(TINY_GRID, input_tokens=[100, 900], output_tokens=[50, 50], duration_s=1)
    readings = iter([10.0, 10.25])
    plan = plan_stages(s, StageModel(tiny_profile()), 2, timer=lambda: next(readings))
    assert plan.planning_time_s == 0.25


def test_overloaded_cluster_still_gets_a_plan() -> None:
    s = summarize_lengths(
        TINY_GRID, input_tokens=[1500] * 10, output_tokens=[400] * 10, duration_s=1e-3
    )
    plan = plan_stages(s, StageModel(tiny_profile()), 3)
    assert not plan.feasible and plan.cost == np.inf
    assert plan.num_instances == 3
    assert plan.to_dict()["cost"] is None


def _costs(cost: np.ndarray, load: np.ndarray) -> StageCosts:
    return StageCosts(cost=cost, ttft_s=np.zeros_like(cost), tpot_s=np.zeros_like(cost), load=load)


@pytest.mark.parametrize("merge", [True, False])
def test_with_no_sustainable_plan_the_least_loaded_one_is_returned(merge: bool) -> None:
    # Two buckets, two instances, every plan infinite. Summed loads: one stage of 2 -> 3.0;
    # two stages of 1 -> 1.0 + 1.0 = 2.0: the split is the least loaded plan.
    cost = np.full((3, 3, 2), np.inf)
    load = np.full((3, 3, 2), 50.0)
    load[0, 2, 1] = 3.0
    load[0, 1, 0] = 1.0
    load[1, 2, 0] = 1.0
    total, segments, feasible = plan_from_costs(TINY_GRID, _costs(cost, load), merge=merge)
    assert (total, segments, feasible) == (np.inf, [(0, 1, 1), (1, 2, 1)], False)
    # The other way round, one stage is the least loaded.
    load[0, 2, 1] = 1.5
    _, segments, _ = plan_from_costs(TINY_GRID, _costs(cost, load), merge=merge)
    assert segments == [(0, 2, 2)]


@settings(max_examples=60, deadline=None)
@given(table=cost_tables())
def test_infeasible_fallback_minimises_the_summed_load(table: np.ndarray) -> None:
    load = table  # random loads (inf where a stage cannot be), every cost infinite
    if not np.isfinite(brute_force(load)[0]):
        return
    cost = np.full_like(load, np.inf)
    total, segments, feasible = plan_from_costs(TINY_GRID, _costs(cost, load), merge=False)
    assert not feasible and total == np.inf
    best, _ = brute_force(load)
    assert sum(load[i, j, n - 1] for i, j, n in segments) == pytest.approx(best)


def test_a_feasible_plan_costs_its_segments() -> None:
    cost = np.full((3, 3, 2), np.inf)
    cost[0, 1, 0], cost[1, 2, 0], cost[0, 2, 1] = 1.0, 2.0, 3.5
    load = np.full((3, 3, 2), 0.5)
    assert plan_from_costs(TINY_GRID, _costs(cost, load)) == (3.0, [(0, 1, 1), (1, 2, 1)], True)
    cost[0, 2, 1] = 3.0  # a tie: one stage (fewer hops)
    assert plan_from_costs(TINY_GRID, _costs(cost, load)) == (3.0, [(0, 2, 2)], True)
    assert plan_from_costs(TINY_GRID, _costs(cost, load), merge=False)[2] is True


def test_bad_instance_count() -> None:
    s = summarize_lengths(TINY_GRID, input_tokens=[10], output_tokens=[5], duration_s=1)
    with pytest.raises(ValidationError):
        plan_stages(s, StageModel(tiny_profile()), 0)


@settings(max_examples=25, deadline=None)
@given(
    reqs=workloads,
    rate=st.floats(np.log(0.5), np.log(300.0)).map(np.exp),  # light load to overload
    extra=st.integers(1, 40),
    mechanism=st.sampled_from(["kv-transfer", "replay"]),
)
def test_large_fleets_stay_within_the_block_bound_of_the_exact_dp(
    reqs: list[tuple[int, int]], rate: float, extra: int, mechanism: str
) -> None:
    """Above EXACT_MAX_INSTANCES the partition is searched in blocks: never better than the
    exact DP (it is a plan), never worse than the block bound of l4.core.search."""
    e = EXACT_MAX_INSTANCES + extra
    q = block_size(e)
    s, model = _tiny_stage_model(reqs, rate, mechanism)
    costs = model.cost_table(s, e)
    best, best_segs = solve_dp(costs.cost)
    plan = plan_stages(s, model, e, timer=lambda: 0.0)
    assert plan.block_instances == q == 2
    assert plan.num_instances == e and all(st_.num_instances >= 1 for st_ in plan.stages)
    assert plan.feasible == bool(np.isfinite(best))
    if not plan.feasible:
        return
    assert plan.cost >= best - 1e-9 * best
    assert plan.cost == pytest.approx(sum(st_.cost for st_ in plan.stages))
    if all(n >= q for *_, n in best_segs):
        ranges = s.ranges(model.lmax_quantile)
        bound = 0.0
        for i, j, n in best_segs:
            raw, *_ = model.evaluate_stages(ranges, [i], [j], q * np.arange(1, n // q + 1))
            bound += float(np.min(raw))
        assert plan.cost <= bound * (1 + 1e-9)


def test_a_fleet_above_the_limit_is_refused_before_any_work() -> None:
    s = summarize_lengths(TINY_GRID, input_tokens=[10], output_tokens=[5], duration_s=1)

    class Untouchable(StageModel):
        def cost_table(self, *args: object, **kwargs: object) -> NoReturn:
            raise AssertionError("planned a refused fleet")

    with pytest.raises(ValidationError, match=f"limit of {MAX_PLAN_INSTANCES}"):
        plan_stages(s, Untouchable(tiny_profile()), MAX_PLAN_INSTANCES + 1)


def test_plan_document_of_a_feasible_plan() -> None:
    s = summarize_lengths(TINY_GRID, input_tokens=[100, 900], output_tokens=[50, 50], duration_s=1)
    plan = plan_stages(s, StageModel(tiny_profile()), 2, timer=lambda: 0.0)
    doc = plan.to_dict()
    assert plan.feasible and doc["cost"] == plan.cost and doc["planning_time_s"] == 0.0
    stages = doc["stages"]
    assert isinstance(stages, list) and len(stages) == len(plan.stages)
    assert stages[0]["lo_tokens"] == 0 and stages[-1]["hi_tokens"] is None
    assert sum(st_["instances"] for st_ in stages) == 2
    assert all(st_["ttft_s"] == p.ttft_s for st_, p in zip(stages, plan.stages, strict=True))


def test_the_fleet_size_limit_is_inclusive() -> None:
    check_fleet_size(1)
    check_fleet_size(MAX_PLAN_INSTANCES)
    with pytest.raises(ValidationError, match=f"^--instances {MAX_PLAN_INSTANCES + 1} is above"):
        check_fleet_size(MAX_PLAN_INSTANCES + 1)
    with pytest.raises(ValidationError, match=r"^--instances must be >= 1, got 0$"):
        check_fleet_size(0)


def test_the_fallback_prices_sustainable_stages_at_their_cost() -> None:
    # No plan is sustainable. One stage of both instances is overloaded (load 1.5); the split
    # keeps the short stage sustainable (cost 1.0, load 0.9) and overloads the long one (1.2).
    # The fallback ranks the overloaded stages by load (1.2 < 1.5), the others by cost: the
    # split, although its loads sum to more (0.9 + 1.2 > 1.5).
    cost = np.full((3, 3, 2), np.inf)
    load = np.full((3, 3, 2), 50.0)
    cost[0, 1, 0], load[0, 1, 0] = 1.0, 0.9
    load[1, 2, 0] = 1.2
    load[0, 2, 1] = 1.5
    for merge in (True, False):
        total, segments, feasible = plan_from_costs(TINY_GRID, _costs(cost, load), merge=merge)
        assert (total, segments, feasible) == (np.inf, [(0, 1, 1), (1, 2, 1)], False)


def test_plans_merge_by_default() -> None:
    """The DP adds costs left to right: (0.3 + 0.2) + 0.1 rounds to 0.6, below
    0.3 + (0.2 + 0.1) = 0.6000000000000001, so it keeps three stages where the last two joined
    cost exactly the sum of theirs. The merge pass (on unless ``merge=False``) joins them."""
    grid = exponential_grid(2048, substeps_per_octave=1, min_tokens=512)  # 0, 512, 1024
    cost = np.full((4, 4, 3), np.inf)
    cost[0, 1, 0], cost[1, 2, 0], cost[2, 3, 0] = 0.3, 0.2, 0.1
    cost[1, 3, 1] = 0.2 + 0.1

    class Fixed(StageModel):
        def cost_table(self, summary: WorkloadSummary, max_instances: int) -> StageCosts:
            return _costs(cost, np.full_like(cost, 0.5))

    s = summarize_lengths(grid, input_tokens=[100], output_tokens=[10], duration_s=1.0)
    model = Fixed(tiny_profile())

    def bounds(plan: Plan) -> list[tuple[int, int | None, int]]:
        return [(st_.lo_tokens, st_.hi_tokens, st_.num_instances) for st_ in plan.stages]

    unmerged = plan_stages(s, model, 3, merge=False)
    assert bounds(unmerged) == [(0, 512, 1), (512, 1024, 1), (1024, None, 1)]
    assert bounds(plan_stages(s, model, 3)) == [(0, 512, 1), (512, None, 2)]
    assert bounds(plan_stages(s, model, 3, merge=True)) == [(0, 512, 1), (512, None, 2)]


def test_large_fleet_stages_carry_the_stage_model_predictions() -> None:
    s, model = _tiny_stage_model([(100, 50), (900, 200), (1700, 100)] * 4, 40.0, "kv-transfer")
    e = EXACT_MAX_INSTANCES + 3
    plan = plan_stages(s, model, e, timer=lambda: 0.0)
    assert plan.feasible and len(plan.stages) >= 2
    table = model.cost_table(s, e)  # the small-fleet table: the same model, idle rule applied
    edges = list(TINY_GRID.edges_tokens)
    for st_ in plan.stages:
        i = edges.index(st_.lo_tokens)
        j = TINY_GRID.num_buckets if st_.hi_tokens is None else edges.index(st_.hi_tokens)
        n = st_.num_instances
        assert st_.ttft_s == pytest.approx(table.ttft_s[i, j, n - 1], rel=1e-12)
        assert st_.tpot_s == pytest.approx(table.tpot_s[i, j, n - 1], rel=1e-12)
        assert st_.cost == pytest.approx(table.cost[i, j, n - 1], rel=1e-12)


def test_an_overloaded_large_fleet_still_gets_a_plan() -> None:
    s, model = _tiny_stage_model([(1500, 400)] * 10, 10_000.0, "kv-transfer")
    e = EXACT_MAX_INSTANCES + 1
    plan = plan_stages(s, model, e, timer=lambda: 0.0)
    assert not plan.feasible and plan.cost == np.inf
    assert plan.num_instances == e and all(st_.num_instances >= 1 for st_ in plan.stages)
    assert plan.stages[0].lo_tokens == 0 and plan.stages[-1].hi_tokens is None
