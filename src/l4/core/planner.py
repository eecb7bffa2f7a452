"""DP over stage partitions of the length grid, then a greedy merge (L4.md section 5).

``f[k][e]`` = least cost of serving lengths ``[0, g_k)`` with ``e`` instances:
``f[k][e] = min over k' < k, 1 <= n <= e of f[k'][e - n] + C(k', k, n)``, ``f[0][0] = 0``; the
plan is ``f[K][E]`` read back through back-pointers. Each ``k`` is one numpy min over a
``(k, E + 1, E)`` block, so the DP is O(K^2 E^2) work in K vectorised steps.

Guarantees: the DP cost equals the brute-force minimum over all partitions and instance splits
(``brute_force``, for tests); stage bounds are strictly increasing, start at 0 and end at infinity;
every stage has >= 1 instance; the counts sum to E. The greedy merge joins adjacent stages only
while that does not raise the cost (equal-cost ties: fewer hops). When no plan is sustainable
(every one has infinite cost) the plan minimising the summed stage load is returned with
``feasible=False`` and ``cost=inf``. Timing goes through an injected ``timer``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from l4.core.grid import LengthGrid
from l4.core.qoe import StageCosts, StageModel
from l4.core.summary import WorkloadSummary
from l4.errors import ValidationError

FloatArray = npt.NDArray[np.float64]
Segment = tuple[int, int, int]  # (i, j, n): grid indices of [g_i, g_j) and its instance count
# Ranks infeasible stages by load when every plan is infinite; far above any real cost.
_INFEASIBLE_PENALTY = 1e12


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


# ---- the DP ------------------------------------------------------------------------------------
def solve_dp(cost: FloatArray) -> tuple[float, list[Segment]]:
    """Least total cost and its segments for a table ``cost[i, j, n - 1]`` of shape (K+1, K+1, E).

    Uses all E instances. Ties are broken towards the smallest (k', n) in flattened order.
    """
    k1, _, e_max = cost.shape
    f = np.full((k1, e_max + 2), np.inf)  # column E + 1 stays inf: the target of e - n < 0
    f[0, 0] = 0.0
    e_idx = np.arange(e_max + 1)[:, None] - np.arange(1, e_max + 1)[None, :]  # (E + 1, E)
    e_idx = np.where(e_idx >= 0, e_idx, e_max + 1)
    back_i = np.zeros((k1, e_max + 1), dtype=np.int64)
    back_n = np.zeros((k1, e_max + 1), dtype=np.int64)
    for k in range(1, k1):
        cand = f[:k][:, e_idx] + cost[:k, k][:, None, :]  # (k, E + 1, E)
        flat = cand.transpose(1, 0, 2).reshape(e_max + 1, k * e_max)
        arg = np.argmin(flat, axis=1)
        f[k, : e_max + 1] = flat[np.arange(e_max + 1), arg]
        back_i[k] = arg // e_max
        back_n[k] = arg % e_max + 1
    total = float(f[k1 - 1, e_max])
    segments: list[Segment] = []
    k, e = k1 - 1, e_max
    if np.isfinite(total):
        while k > 0:
            i, n = int(back_i[k, e]), int(back_n[k, e])
            segments.append((i, k, n))
            k, e = i, e - n
        segments.reverse()
    return total, segments


def _partitions(k1: int) -> Iterator[tuple[int, ...]]:
    """Every boundary sequence 0 = b_0 < ... < b_N = K over the grid indices."""
    inner = range(1, k1 - 1)
    for size in range(len(inner) + 1):
        for cut in itertools.combinations(inner, size):
            yield (0, *cut, k1 - 1)


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every way to write ``total`` as ``parts`` positive integers."""
    for cut in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cut, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def brute_force(cost: FloatArray) -> tuple[float, list[Segment]]:
    """Reference for tests: enumerate every partition and instance split (small cases only)."""
    k1, _, e_max = cost.shape
    best, best_segments = np.inf, []
    for bounds in _partitions(k1):
        parts = len(bounds) - 1
        if parts > e_max:
            continue
        for split in _compositions(e_max, parts):
            segs = [(bounds[s], bounds[s + 1], split[s]) for s in range(parts)]
            total = float(sum(cost[i, j, n - 1] for i, j, n in segs))
            if total < best:
                best, best_segments = total, segs
    return float(best), best_segments


def merge_greedy(cost: FloatArray, segments: list[Segment]) -> list[Segment]:
    """Join the adjacent pair with the largest saving while joining does not raise the cost."""
    segs = list(segments)
    while len(segs) > 1:
        savings = [
            cost[a[0], a[1], a[2] - 1]
            + cost[b[0], b[1], b[2] - 1]
            - cost[a[0], b[1], a[2] + b[2] - 1]
            for a, b in itertools.pairwise(segs)
        ]
        best = int(np.nanargmax(savings)) if not np.all(np.isnan(savings)) else -1
        if best < 0 or not savings[best] >= 0:
            break
        a, b = segs[best], segs[best + 1]
        segs[best : best + 2] = [(a[0], b[1], a[2] + b[2])]
    return segs


# ---- from a summary to a plan ------------------------------------------------------------------
def plan_from_costs(
    grid: LengthGrid, costs: StageCosts, *, merge: bool = True
) -> tuple[float, list[Segment], bool]:
    """DP (+ merge) on a cost table: (cost, segments, feasible)."""
    total, segments = solve_dp(costs.cost)
    feasible = bool(np.isfinite(total))
    table = costs.cost
    if not feasible:
        table = np.where(np.isfinite(costs.cost), costs.cost, _INFEASIBLE_PENALTY * costs.load)
        _, segments = solve_dp(table)
    if merge:
        segments = merge_greedy(table, segments)
    if feasible:
        total = float(sum(costs.cost[i, j, n - 1] for i, j, n in segments))
    return (total if feasible else float("inf")), segments, feasible


def plan_stages(
    summary: WorkloadSummary,
    model: StageModel,
    num_instances: int,
    *,
    merge: bool = True,
    timer: Callable[[], float] = time.perf_counter,
) -> Plan:
    """The QoE-best plan of ``num_instances`` instances for ``summary``; timed by ``timer``."""
    if num_instances < 1:
        raise ValidationError(f"--instances must be >= 1, got {num_instances}")
    t0 = timer()
    costs = model.cost_table(summary, num_instances)
    total, segments, feasible = plan_from_costs(summary.grid, costs, merge=merge)
    elapsed = timer() - t0
    grid = summary.grid
    stages = tuple(
        PlannedStage(
            lo_tokens=int(grid.boundary_tokens(i) or 0),
            hi_tokens=grid.boundary_tokens(j),
            num_instances=n,
            ttft_s=float(costs.ttft_s[i, j, n - 1]),
            tpot_s=float(costs.tpot_s[i, j, n - 1]),
            cost=float(costs.cost[i, j, n - 1]),
        )
        for i, j, n in segments
    )
    return Plan(stages=stages, cost=total, planning_time_s=elapsed, feasible=feasible)
