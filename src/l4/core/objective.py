"""What the planner minimises: the QoE cost weights and the SLO objective (L4.md section 4).

``QoeWeights`` weighs a stage's latency terms (all 1: mean E2E latency); ``SloObjective`` adds
the predicted SLO misses and every length bucket's tail, as capacity judges them
(EVALUATION.md). ``l4.core.qoe.StageModel`` evaluates both.
"""

from __future__ import annotations

from dataclasses import dataclass

from l4.errors import ValidationError


@dataclass(frozen=True, slots=True, kw_only=True)
class QoeWeights:
    """Weights of the cost terms; all 1 minimises mean E2E latency (seconds added per second)."""

    ttft: float = 1.0
    tpot: float = 1.0
    migration: float = 1.0

    def __post_init__(self) -> None:
        if min(self.ttft, self.tpot, self.migration) < 0:
            raise ValidationError("QoE weights must be >= 0")

    @classmethod
    def slo_normalised(cls, *, ttft_slo_s: float, tpot_slo_s: float) -> QoeWeights:
        """1/SLO weights; a migration stall counts against the TPOT SLO."""
        if not (ttft_slo_s > 0 and tpot_slo_s > 0):
            raise ValidationError("SLOs must be > 0 s")
        return cls(ttft=1.0 / ttft_slo_s, tpot=1.0 / tpot_slo_s, migration=1.0 / tpot_slo_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class SloObjective:
    """What the planner optimises beyond mean latency: SLO goodput, every length bucket's tail.

    A stage's cost per second becomes ``latency + miss_cost_s * misses + tail_cost_s * excess``:

    * ``misses``: requests per second predicted to miss their SLOs (TTFT within ``slo_scale`` x
      the unloaded TTFT of their prompt, TPOT within ``slo_scale`` x the unloaded TPOT at the
      stage's contexts; EVALUATION.md's goodput). A prompt bucket's TTFT misses are the chance
      that the stage's queueing wait exceeds its slack (the SLO less its own prefill): the wait
      is zero with probability ``1 - p_wait`` and otherwise exponential with the stage's mean
      wait over ``p_wait``, ``p_wait`` being the M/G/n chance to wait (``util^(sqrt(2(n+1)) -
      1)``, Sakasegawa) joined with the chance to queue behind one's own arrival group. A
      stage's TPOT misses ramp from none at 0.8 x the TPOT SLO to all at 1.2 x (a request's
      TPOT averages hundreds of steps, so it sits close to the stage's mean), counted in
      requests by the workload's mean output length.
    * ``excess``: for every prompt bucket, the miss rate above ``1 - target`` (times its
      arrivals): capacity judges every length class (EVALUATION.md), so a plan that lets one
      class starve must not win by serving the others well. A class is a union of buckets, so
      no bucket above the line means no class above it.
    * ``rate_spread``: the stage is costed at its mean rate and at the Poisson spread of its
      arrival count over one request's lifetime (three-point Gauss-Hermite: the mean with weight
      2/3, mean +- sqrt(3) standard deviations with 1/6 each). A stage of few, long prompts runs
      near saturation whenever a few more than the mean arrive together; one stage of all
      instances pools them. Measured: 612 prompts of ~4K tokens on 2 instances (Azure chat
      x45's top stage) ran at TPOT 18 ms where the mean model predicted 9 ms.
    * an overloaded stage (no decode fixed point, or over its sequence or KV limits) misses
      every request it holds and pays ``overload_horizon_s`` of latency per request per unit of
      load, instead of an infinite cost: under overload the DP still ranks plans, by how much
      they degrade, rather than giving up. The horizon is long (its queue grows without bound,
      and preemptions follow), so a plan that overloads any stage never beats one that overloads
      none: the DP sacrifices a stage only when every plan has to.

    With the costs in seconds, ``miss_cost_s`` is what one missed request is worth in latency:
    large enough that goodput decides whenever plans differ in predicted misses, while the
    latency term still orders plans that all meet their SLOs.
    """

    slo_scale: float = 5.0
    target: float = 0.9
    miss_cost_s: float = 100.0
    tail_cost_s: float = 1000.0
    overload_horizon_s: float = 1e4
    # Price the Poisson spread of a stage's arrivals over one request's lifetime (``StageModel``):
    # the fixed point is a mean-rate model, and the cost is convex in the rate, so a small,
    # busy stage costs more than its mean predicts. False: the mean alone (the first version).
    rate_spread: bool = True

    def __post_init__(self) -> None:
        if not self.slo_scale > 0 or not 0.0 < self.target <= 1.0:
            raise ValidationError("SLO scale must be > 0 and the target in (0, 1]")
        if min(self.miss_cost_s, self.tail_cost_s, self.overload_horizon_s) < 0:
            raise ValidationError("objective weights must be >= 0")
