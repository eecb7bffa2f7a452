"""Boundary rules for range refinement (L4.md section 6.1), pure functions of a summary.

Each call re-solves one boundary between two adjacent stages ``[g_lo, g_b)`` (``n_lo`` instances)
and ``[g_b, g_hi)`` (``n_hi``) over the grid indices strictly between ``lo`` and ``hi``:

* ``QOE``: the index minimising the QoE cost of the two stages (``StageModel.stage_costs``);
* ``COUNT``: the index equalising running requests per instance (decode token-steps per second,
  which by Little's law is running requests over TPOT), the ablation of request-count balancing;
* ``MEMORY``: the index equalising KV tokens held per instance (decode steps weighted by their
  context), the ablation of memory balancing.

``next_boundary`` then applies the guards against oscillation: a low-traffic freeze, a minimum
gain over the current boundary, at most ``max_grid_steps`` grid steps per round toward the target,
and a minimum relative move. Results always lie strictly between ``lo`` and ``hi``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from l4.core.qoe import StageModel
from l4.core.summary import WorkloadSummary
from l4.errors import ValidationError

FloatArray = npt.NDArray[np.float64]
_INFEASIBLE = 1e12  # ranks unsustainable splits by load, below nothing feasible


class BoundaryRule(enum.Enum):
    QOE = "qoe"
    COUNT = "count"
    MEMORY = "memory"


@dataclass(frozen=True, slots=True, kw_only=True)
class RefinementConfig:
    period_s: float = 2.0
    smoothing: float = 0.3  # EMA weight of the newest window
    freeze_min_requests: int = 8  # fewer requests seen by the two stages in a window: no move
    min_gain: float = 0.02  # the target must beat the current boundary by this fraction
    min_relative_move: float = 0.1
    max_grid_steps: int = 1

    def __post_init__(self) -> None:
        if not self.period_s > 0:
            raise ValidationError("refinement period must be > 0 s")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValidationError("refinement smoothing must lie in (0, 1]")
        if self.freeze_min_requests < 0 or self.min_gain < 0 or self.min_relative_move < 0:
            raise ValidationError("refinement guards must be >= 0")
        if self.max_grid_steps < 1:
            raise ValidationError("refinement must be allowed at least one grid step per round")


def split_scores(
    summary: WorkloadSummary,
    model: StageModel,
    rule: BoundaryRule,
    *,
    lo: int,
    hi: int,
    n_lo: int,
    n_hi: int,
) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Candidate indices ``lo < b < hi`` and each one's score (lower is better)."""
    cand = np.arange(lo + 1, hi, dtype=np.intp)
    if cand.size == 0:
        return cand, np.zeros(0)
    if rule is BoundaryRule.QOE:
        rt = summary.ranges(model.lmax_quantile)
        # Both sides of every candidate in one evaluation (the model's cost is per call here).
        m = cand.size
        cost, load = model.stage_costs(
            rt,
            np.concatenate([np.full_like(cand, lo), cand]),
            np.concatenate([cand, np.full_like(cand, hi)]),
            np.repeat([float(n_lo), float(n_hi)], m),
        )
        c_lo, c_hi, load_lo, load_hi = cost[:m], cost[m:], load[:m], load[m:]
        total = c_lo + c_hi
        fallback = _INFEASIBLE * np.maximum(load_lo, load_hi)
        return cand, np.where(np.isfinite(total), total, fallback)
    mass = summary.decode_steps if rule is BoundaryRule.COUNT else summary.decode_length_sum
    cum = np.concatenate(([0.0], np.cumsum(mass)))
    below = (cum[cand] - cum[lo]) / n_lo
    above = (cum[hi] - cum[cand]) / n_hi
    return cand, np.abs(below - above)


def next_boundary(
    summary: WorkloadSummary,
    model: StageModel,
    rule: BoundaryRule,
    config: RefinementConfig,
    *,
    lo: int,
    current: int,
    hi: int,
    n_lo: int,
    n_hi: int,
    requests_seen: int,
    unlimited: bool = False,
) -> int:
    """Grid index of the boundary after one refinement round (``current`` if it stays).

    ``unlimited`` jumps straight to the target (used to place the initial boundaries of the
    count and memory ablations), skipping the freeze and step guards.
    """
    if not lo < current < hi:
        raise ValidationError(f"boundary index {current} not strictly inside ({lo}, {hi})")
    if not unlimited and requests_seen < config.freeze_min_requests:
        return current
    cand, score = split_scores(summary, model, rule, lo=lo, hi=hi, n_lo=n_lo, n_hi=n_hi)
    best = int(cand[int(np.argmin(score))])
    if best == current:
        return current
    now_score = float(score[current - lo - 1])
    best_score = float(np.min(score))
    if not best_score < now_score * (1.0 - config.min_gain):
        return current
    if unlimited:
        return best
    step = max(-config.max_grid_steps, min(config.max_grid_steps, best - current))
    target = current + step
    edges = summary.grid.edges_array()
    if abs(edges[target] - edges[current]) < config.min_relative_move * edges[current]:
        return current
    return target
