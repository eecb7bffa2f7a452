"""The L4 planner: the QoE-best stage plan of a fleet for a workload (L4.md section 5).

The stage model (``l4.core.qoe``) prices every stage ``[g_i, g_j)`` of the length grid with ``n``
instances; the search (``l4.core.search``) finds the partition and split of least total cost, then
greedily merges adjacent stages while that does not raise the cost (equal-cost ties: fewer hops).

Guarantees: up to ``EXACT_MAX_INSTANCES`` (64) instances the plan's cost equals the brute-force
minimum over all partitions and instance splits of the cost table; above, the partition is searched
in blocks of ``ceil(E / 64)`` instances and the split is exact (the bound on the gap is in
``l4.core.search``); fleets above ``MAX_PLAN_INSTANCES`` are refused with a ``ValidationError``.
Stage bounds are strictly increasing, start at 0 and end at infinity; every stage has >= 1
instance; the counts sum to E. When no plan is sustainable (every one has infinite cost) the plan
minimising the summed load of its unsustainable stages (its sustainable ones counting at their
cost) is returned with ``feasible=False`` and ``cost=inf``. Timing goes through an injected
``timer``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from l4.core.grid import LengthGrid
from l4.core.qoe import StageCosts, StageModel
from l4.core.search import (
    EXACT_MAX_INSTANCES,
    Segment,
    block_search,
    block_size,
    brute_force,
    idle_best,
    merge_greedy,
    merge_segments,
    solve_dp,
)
from l4.core.summary import RangeTable, WorkloadSummary
from l4.errors import ValidationError

__all__ = [
    "EXACT_MAX_INSTANCES",
    "MAX_PLAN_INSTANCES",
    "Plan",
    "PlannedStage",
    "brute_force",
    "check_fleet_size",
    "merge_greedy",
    "plan_from_costs",
    "plan_stages",
    "solve_dp",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
# Ranks infeasible stages by load when every plan is infinite; far above any real cost.
_INFEASIBLE_PENALTY = 1e12
# The largest fleet planned: its exact split of instances over the stages (O(S E^2)) stays within
# seconds and its memory within a few hundred MB (docs/benchmarks/planner_speed.md).
MAX_PLAN_INSTANCES = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedStage:
    lo_tokens: int
    hi_tokens: int | None  # None: the last stage, open above
    num_instances: int
    ttft_s: float  # predicted
    tpot_s: float  # predicted
    cost: float  # this stage's share of the QoE cost per second

    def contains(self, length_tokens: int) -> bool:
        return self.lo_tokens <= length_tokens and (
            self.hi_tokens is None or length_tokens < self.hi_tokens
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    stages: tuple[PlannedStage, ...]
    cost: float  # QoE cost per second; inf when no partition is sustainable
    planning_time_s: float
    feasible: bool = True
    # Instances per block of the partition search (1: exact; see l4.core.search.block_search).
    block_instances: int = 1

    @property
    def num_instances(self) -> int:
        return sum(s.num_instances for s in self.stages)

    @property
    def boundaries_tokens(self) -> tuple[int, ...]:
        """Inner stage boundaries b_1 < ... < b_{N-1}."""
        return tuple(s.lo_tokens for s in self.stages[1:])

    def stage_of(self, length_tokens: int) -> int:
        """Index of the stage whose range contains ``length_tokens``."""
        return sum(1 for b in self.boundaries_tokens if b <= length_tokens)

    def to_dict(self) -> dict[str, object]:
        """The ``l4 plan --json`` document (``cost`` null when infinite)."""
        return {
            "planning_time_s": self.planning_time_s,
            "cost": self.cost if np.isfinite(self.cost) else None,
            "block_instances": self.block_instances,
            "stages": [
                {
                    "lo_tokens": s.lo_tokens,
                    "hi_tokens": s.hi_tokens,
                    "instances": s.num_instances,
                    "ttft_s": s.ttft_s if np.isfinite(s.ttft_s) else None,
                    "tpot_s": s.tpot_s if np.isfinite(s.tpot_s) else None,
                }
                for s in self.stages
            ],
        }


# ---- from a summary to a plan ------------------------------------------------------------------
def plan_from_costs(
    grid: LengthGrid, costs: StageCosts, *, merge: bool = True
) -> tuple[float, list[Segment], bool]:
    """DP (+ merge) on a cost table: (cost, segments, feasible)."""
    total, segments = solve_dp(costs.cost)
    feasible = bool(np.isfinite(total))
    table = costs.cost
    if not feasible:
        table = _penalised(costs.cost, costs.load)
        _, segments = solve_dp(table)
    if merge:
        segments = merge_greedy(table, segments)
    if feasible:
        total = float(sum(costs.cost[i, j, n - 1] for i, j, n in segments))
    return (total if feasible else float("inf")), segments, feasible


def _penalised(cost: FloatArray, load: FloatArray) -> FloatArray:
    out: FloatArray = np.where(np.isfinite(cost), cost, _INFEASIBLE_PENALTY * load)
    return out


class _FleetOracle:
    """The stage model as the large-fleet search sees it: raw costs per (stage, count), memoised.

    Two kinds of request: a few counts of every stage (the block table; asked again, unchanged,
    by the infeasible fallback) and every count ``1..E`` of a few stages (the split, the merge and
    the reported TTFT/TPOT), kept per stage with the idle rule applied.
    """

    def __init__(self, model: StageModel, ranges: RangeTable, num_instances: int) -> None:
        self._model = model
        self._ranges = ranges
        self._all = np.arange(1, num_instances + 1, dtype=np.intp)
        self._tables: dict[bytes, tuple[FloatArray, FloatArray]] = {}
        self._rows: dict[tuple[int, int], tuple[FloatArray, ...]] = {}

    def rows(self, pairs: Sequence[tuple[int, int]]) -> list[tuple[FloatArray, ...]]:
        """(cost, TTFT, TPOT, load) of each stage for 1..E instances, idle rule applied."""
        missing = sorted({p for p in pairs if p not in self._rows})
        if missing:
            lo = np.array([i for i, _ in missing], dtype=np.intp)
            hi = np.array([j for _, j in missing], dtype=np.intp)
            raw = self._model.evaluate_stages(self._ranges, lo, hi, self._all)
            best = idle_best(raw[0])
            picked = [np.take_along_axis(a, best, axis=1) for a in raw]
            for r, pair in enumerate(missing):
                self._rows[pair] = tuple(a[r] for a in picked)
        return [self._rows[p] for p in pairs]

    def raw(self, lo: IntArray, hi: IntArray, counts: IntArray) -> tuple[FloatArray, FloatArray]:
        if len(counts) == len(self._all) and len(lo) <= 64:
            rows = self.rows(list(zip(lo.tolist(), hi.tolist(), strict=True)))
            return np.array([r[0] for r in rows]), np.array([r[3] for r in rows])
        key = lo.tobytes() + b"|" + hi.tobytes() + b"|" + counts.tobytes()
        if key not in self._tables:
            cost, _, _, load = self._model.evaluate_stages(self._ranges, lo, hi, counts)
            self._tables[key] = (cost, load)
        return self._tables[key]

    def cost(self, lo: IntArray, hi: IntArray, counts: IntArray) -> FloatArray:
        return self.raw(lo, hi, counts)[0]

    def penalised(self, lo: IntArray, hi: IntArray, counts: IntArray) -> FloatArray:
        return _penalised(*self.raw(lo, hi, counts))


def _plan_fleet(
    summary: WorkloadSummary, model: StageModel, num_instances: int, *, merge: bool
) -> tuple[float, list[Segment], bool, list[tuple[float, float, float]]]:
    """The large-fleet path: (cost, segments, feasible, (TTFT, TPOT, cost) per segment)."""
    k1 = summary.grid.num_buckets + 1
    oracle = _FleetOracle(model, summary.ranges(model.lmax_quantile), num_instances)
    search: Callable[[IntArray, IntArray, IntArray], FloatArray] = oracle.cost
    total, segments = block_search(search, k1, num_instances)
    if not np.isfinite(total):
        search = oracle.penalised
        total, segments = block_search(search, k1, num_instances)

    def cost_of(segs: Sequence[Segment]) -> FloatArray:
        rows = oracle.rows([(i, j) for i, j, _ in segs])
        if search == oracle.cost:
            return np.array([r[0][n - 1] for r, (_, _, n) in zip(rows, segs, strict=True)])
        return np.array(
            [_penalised(r[0][n - 1], r[3][n - 1]) for r, (_, _, n) in zip(rows, segs, strict=True)]
        )

    if merge:
        segments = merge_segments(cost_of, segments)
    rows = oracle.rows([(i, j) for i, j, _ in segments])
    per_stage = [
        (float(r[1][n - 1]), float(r[2][n - 1]), float(r[0][n - 1]))
        for r, (_, _, n) in zip(rows, segments, strict=True)
    ]
    true_total = float(sum(c for _, _, c in per_stage))
    feasible = bool(np.isfinite(true_total))
    return (true_total if feasible else float("inf")), segments, feasible, per_stage


def check_fleet_size(num_instances: int) -> None:
    """Refuse, in one line, a fleet the planner cannot plan (before any work is done)."""
    if num_instances < 1:
        raise ValidationError(f"--instances must be >= 1, got {num_instances}")
    if num_instances > MAX_PLAN_INSTANCES:
        raise ValidationError(
            f"--instances {num_instances} is above the planner's limit of {MAX_PLAN_INSTANCES} "
            "instances per plan; plan the fleet as several independent ones"
        )


def plan_stages(
    summary: WorkloadSummary,
    model: StageModel,
    num_instances: int,
    *,
    merge: bool = True,
    timer: Callable[[], float] = time.perf_counter,
) -> Plan:
    """The QoE-best plan of ``num_instances`` instances for ``summary``; timed by ``timer``."""
    check_fleet_size(num_instances)
    t0 = timer()
    grid = summary.grid
    if num_instances <= EXACT_MAX_INSTANCES:
        costs = model.cost_table(summary, num_instances)
        total, segments, feasible = plan_from_costs(grid, costs, merge=merge)
        per_stage = [
            (
                float(costs.ttft_s[i, j, n - 1]),
                float(costs.tpot_s[i, j, n - 1]),
                float(costs.cost[i, j, n - 1]),
            )
            for i, j, n in segments
        ]
    else:
        total, segments, feasible, per_stage = _plan_fleet(
            summary, model, num_instances, merge=merge
        )
    elapsed = timer() - t0
    stages = tuple(
        PlannedStage(
            lo_tokens=int(grid.boundary_tokens(i) or 0),
            hi_tokens=grid.boundary_tokens(j),
            num_instances=n,
            ttft_s=ttft,
            tpot_s=tpot,
            cost=cost,
        )
        for (i, j, n), (ttft, tpot, cost) in zip(segments, per_stage, strict=True)
    )
    return Plan(
        stages=stages,
        cost=total,
        planning_time_s=elapsed,
        feasible=feasible,
        block_instances=block_size(num_instances),
    )
