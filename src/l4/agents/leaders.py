"""What a stage leader and the coordinator decide, as pure functions of the reports they hold.

Every refinement period each agent closes its length window into a ``LengthReport`` (rates per
second, so windows of any length add up). The leader of stage k-1 combines the reports of stages
k-1 and k and moves boundary k by the configured rule (``l4.agents.refinement``); the coordinator
combines everyone's and re-runs the DP, proposing a new plan only when it is predicted to be
clearly better than the one in force. The runtime decides who sends what to whom; nothing here
touches the bus or a clock.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from l4.agents.messages import LengthReport, PlanUpdate
from l4.agents.refinement import BoundaryRule, RefinementConfig, next_boundary
from l4.agents.stages import StageTable, reassign
from l4.core.choice import prefer_one_stage
from l4.core.grid import LengthGrid
from l4.core.planner import plan_from_costs
from l4.core.qoe import StageCosts, StageModel
from l4.core.summary import WorkloadSummary

FloatArray = npt.NDArray[np.float64]


def length_report(
    summary: WorkloadSummary,
    *,
    sender: int,
    stage: int,
    requests_seen: int,
    now_s: float,
) -> LengthReport:
    """An agent's closed window as per-second rates (what crosses the bus)."""
    d = summary.duration_s

    def rate(values: FloatArray) -> tuple[float, ...]:
        return tuple((values / d).tolist())

    return LengthReport(
        sender=sender,
        stage=stage,
        arrivals=rate(summary.arrivals),
        prompt_tokens=rate(summary.prompt_tokens),
        prompt_tokens_sq=rate(summary.prompt_tokens_sq),
        decode_steps=rate(summary.decode_steps),
        decode_length_sum=rate(summary.decode_length_sum),
        crossings=rate(summary.crossings),
        max_length_tokens=summary.max_length_tokens,
        requests_seen=requests_seen,
        sent_s=now_s,
    )


def combine_reports(
    grid: LengthGrid,
    reports: Sequence[LengthReport],
    *,
    arrival_batch_excess: float,
    arrival_spread: FloatArray | None = None,
) -> WorkloadSummary | None:
    """One workload summary (per second) from several agents' reports; None without reports.

    Crossings into bucket 0 are dropped: a request enters the cluster there, it does not cross."""
    if not reports:
        return None

    def total(name: str) -> FloatArray:
        out: FloatArray = np.sum([getattr(r, name) for r in reports], axis=0)
        return out

    return WorkloadSummary(
        grid=grid,
        duration_s=1.0,
        arrivals=total("arrivals"),
        prompt_tokens=total("prompt_tokens"),
        prompt_tokens_sq=total("prompt_tokens_sq"),
        decode_steps=total("decode_steps"),
        decode_length_sum=total("decode_length_sum"),
        crossings=np.concatenate(([0.0], total("crossings")[1:])),
        max_length_tokens=max(r.max_length_tokens for r in reports),
        arrival_batch_excess=arrival_batch_excess,
        arrival_spread=arrival_spread,
    )


def grid_index(grid: LengthGrid, tokens: int) -> int:
    return bisect.bisect_left(grid.edges_tokens, tokens)


def stage_indices(grid: LengthGrid, table: StageTable, stage: int) -> tuple[int, int]:
    """Grid indices [i, j) that stage ``stage`` of ``table`` covers."""
    b = table.boundaries_tokens
    i = 0 if stage == 0 else grid_index(grid, b[stage - 1])
    j = grid.num_buckets if stage == table.num_stages - 1 else grid_index(grid, b[stage])
    return i, j


def boundary_target(
    summary: WorkloadSummary,
    model: StageModel,
    table: StageTable,
    k: int,
    *,
    rule: BoundaryRule,
    config: RefinementConfig,
    requests_seen: int,
    unlimited: bool = False,
) -> int | None:
    """Grid index boundary k should take under ``rule``; None when no grid candidate lies strictly
    between its neighbours (boundaries set by hand within one grid step): refinement leaves those
    alone."""
    grid = summary.grid
    lo, cur = stage_indices(grid, table, k - 1)
    hi = stage_indices(grid, table, k)[1]
    if not lo < cur < hi:
        return None
    return next_boundary(
        summary,
        model,
        rule,
        config,
        lo=lo,
        current=cur,
        hi=hi,
        n_lo=len(table.members(k - 1)),
        n_hi=len(table.members(k)),
        requests_seen=requests_seen,
        unlimited=unlimited,
    )


def plan_cost(costs: StageCosts, grid: LengthGrid, table: StageTable) -> float:
    """The predicted QoE cost of the plan in force, on the same cost table as a new one."""
    total = 0.0
    for s in range(table.num_stages):
        i, j = stage_indices(grid, table, s)
        total += float(costs.cost[i, j, len(table.members(s)) - 1])
    return total


def propose_plan(
    summary: WorkloadSummary,
    model: StageModel,
    table: StageTable,
    *,
    min_gain: float,
    sender: int,
    stage_margin: float = 0.0,
    drain_cost: Callable[[tuple[int, ...]], float] | None = None,
) -> PlanUpdate | None:
    """The coordinator's new plan, or None when none is feasible or predicted at least
    ``min_gain`` better than ``table`` (a re-plan drains instances: it must be worth it).

    The DP's plan gives way to one stage when it is not ``stage_margin`` cheaper
    (``l4.core.choice``); ``drain_cost`` prices the hand-offs a new assignment of instances
    forces (seconds of latency per second of the re-plan period) and is added to its cost."""
    grid = summary.grid
    costs = model.cost_table(summary, table.num_serving)
    new_cost, segments, feasible = plan_from_costs(grid, costs)
    if not feasible:
        return None
    new_cost, segments = prefer_one_stage(costs, grid, segments, new_cost, margin=stage_margin)
    boundaries = tuple(grid.edges_tokens[j] for _, j, _ in segments[:-1])
    stage_of = reassign(table, [n for _, _, n in segments])
    if boundaries == table.boundaries_tokens and stage_of == table.stage_of_instance:
        return None
    moving = 0.0 if drain_cost is None else drain_cost(stage_of)
    if not new_cost + moving < plan_cost(costs, grid, table) * (1.0 - min_gain):
        return None
    return PlanUpdate(
        version=table.version + 1,
        boundaries_tokens=boundaries,
        stage_of_instance=stage_of,
        sender=sender,
        out=table.out,
    )
