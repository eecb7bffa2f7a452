"""Staging only where it pays: the DP's plan against one stage of every instance.

The stage model is an estimate, and a staged plan carries costs it does not price (hand-offs
whose timing it approximates, instances idle in one stage while another queues, drains when the
plan changes). So a staged plan is used only when its predicted cost is at least ``margin``
below that of one stage of all instances (bids and balancing without boundaries, ``l4_bids``);
otherwise L4 runs as one stage. Pure functions of a summary, a model and a cost table.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from l4.core.grid import LengthGrid
from l4.core.planner import Plan, PlannedStage, plan_stages
from l4.core.qoe import StageCosts, StageModel
from l4.core.search import Segment
from l4.core.summary import WorkloadSummary
from l4.errors import ValidationError


def _check(margin: float) -> None:
    if not 0.0 <= margin < 1.0:
        raise ValidationError(f"staging margin must lie in [0, 1), got {margin}")


def prefer_one_stage(
    costs: StageCosts, grid: LengthGrid, segments: list[Segment], cost: float, *, margin: float
) -> tuple[float, list[Segment]]:
    """``(cost, segments)`` of the DP, or of one stage when staging saves less than ``margin``."""
    _check(margin)
    k, e = grid.num_buckets, costs.max_instances
    one = float(costs.cost[0, k, e - 1])
    if len(segments) > 1 and not cost < one * (1.0 - margin):
        return one, [(0, k, e)]
    return cost, segments


def plan_with_margin(
    summary: WorkloadSummary,
    model: StageModel,
    num_instances: int,
    *,
    margin: float,
    timer: Callable[[], float] = time.perf_counter,
) -> Plan:
    """``plan_stages``, or the one-stage plan when the staged one is not ``margin`` cheaper."""
    _check(margin)
    plan = plan_stages(summary, model, num_instances, timer=timer)
    if len(plan.stages) == 1:
        return plan
    t0 = timer()
    k = summary.grid.num_buckets
    cost, ttft, tpot, _ = model.stage_prediction(
        summary.ranges(model.lmax_quantile), [0], [k], num_instances
    )
    one = float(cost[0])
    if plan.cost < one * (1.0 - margin):
        return plan
    stage = PlannedStage(
        lo_tokens=0,
        hi_tokens=None,
        num_instances=num_instances,
        ttft_s=float(ttft[0]),
        tpot_s=float(tpot[0]),
        cost=one,
    )
    return Plan(
        stages=(stage,),
        cost=one,
        planning_time_s=plan.planning_time_s + timer() - t0,
        feasible=plan.feasible,
    )
