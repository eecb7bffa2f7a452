"""What an L4 deployment can be told: staging, refinement, re-planning and admission."""

from __future__ import annotations

from dataclasses import dataclass, field

from l4.agents.agent import AgentConfig
from l4.agents.refinement import BoundaryRule, RefinementConfig
from l4.core.objective import SloObjective
from l4.errors import ValidationError


@dataclass(frozen=True, slots=True, kw_only=True)
class L4Config:
    # False: every instance in one stage for the whole run (no DP plan, refinement or re-plan),
    # leaving bid-ask placement and balancing: the ablation that separates bidding from staging.
    staged: bool = True
    rule: BoundaryRule = BoundaryRule.QOE
    refine: bool = True
    replan: bool = True
    replan_period_s: float = 30.0
    replan_min_gain: float = 0.1  # adopt a new plan only if predicted this much better...
    replan_confirmations: int = 2  # ...in this many re-plan rounds in a row (hysteresis)
    # What the planner optimises: SLO goodput with every length bucket's tail (None: the mean
    # latency of L4.md section 4 alone, the first version's objective).
    objective: SloObjective | None = field(default_factory=SloObjective)
    # Spill: an arrival whose entry stage cannot start it within spill_threshold x its TTFT SLO
    # is offered to later stages, and goes there when that is spill_margin cheaper (TTFT and
    # TPOT, each over its SLO); only instances with nothing queued bid (no starvation).
    spill: bool = True
    spill_threshold: float = 0.5
    spill_margin: float = 0.2
    # Overflow: an arrival whose entry stage has no instance with KV room for its prompt now
    # goes to the least loaded instance of a neighbouring stage that has. Queued there, a long
    # prompt would be admitted by its first chunk and preempt itself (and the running requests)
    # chunk after chunk while the stage's cache stays full: vLLM's recompute thrash, which a
    # one-instance last stage falls into under a burst of long prompts. An overflowed request
    # finishes where it went: cascading it back would re-prefill (token replay) or copy its
    # long context into the stage that had no room for it (measured: with replay and cascades
    # back, one Mooncake window past capacity thrashed, 2,478 preemptions).
    overflow: bool = True
    # Stage only when the staged plan is predicted this much cheaper than one stage.
    stage_margin: float = 0.2
    agent: AgentConfig = field(default_factory=AgentConfig)
    refinement: RefinementConfig = field(default_factory=RefinementConfig)

    def __post_init__(self) -> None:
        if not self.replan_period_s > 0:
            raise ValidationError("re-plan period must be > 0 s")
        if not 0 <= self.replan_min_gain < 1:
            raise ValidationError("re-plan gain must lie in [0, 1)")
        if self.replan_confirmations < 1:
            raise ValidationError("a re-plan needs at least one confirming round")
        if not 0 <= self.stage_margin < 1:
            raise ValidationError("staging margin must lie in [0, 1)")
        if not (self.spill_threshold >= 0 and 0 <= self.spill_margin < 1):
            raise ValidationError("spill threshold must be >= 0 and its margin in [0, 1)")
        if not self.staged and (self.refine or self.replan):
            raise ValidationError("one stage (staged=False) neither refines nor re-plans")
