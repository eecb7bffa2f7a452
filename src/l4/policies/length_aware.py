"""L4 and its ablations as simulator policies (L4.md sections 2-7).

* ``l4``         DP plan, QoE-driven range refinement, periodic re-plan, bid-ask inside stages.
* ``l4_static``  the DP plan kept as it is: no refinement, no re-plan (bid-ask still on).
* ``l4_count``   boundaries placed and refined to equalise running requests per instance.
* ``l4_memory``  boundaries placed and refined to equalise KV tokens held per instance.
* ``l4_rr``      ``l4`` with round robin instead of bids inside stages (and no balancing asks).
* ``l4_bids``    one stage of all instances: bid-ask placement and balancing without staging.
* ``l4_nospill`` ``l4`` without spill: arrivals stay in their entry stage however long it queues.
* ``l4_nooverflow`` ``l4`` without overflow: an arrival queues in its entry stage even when no
                 instance there has KV room for its prompt.
* ``l4_meanlat`` ``l4`` with the first version's planner: mean-latency objective, staging
                 whenever the DP finds it cheaper, re-plans adopted at once (the objective's
                 ablation).

The count and memory ablations keep the DP's stage sizes and skip the QoE re-plan, so they differ
from ``l4`` in the boundary rule only (plus re-planning, which ``l4_static`` isolates). ``l4_bids``
versus ``l4`` is what staging itself gains or loses.
"""

from __future__ import annotations

from collections.abc import Callable

from l4.agents.agent import AgentConfig
from l4.agents.config import L4Config
from l4.agents.refinement import BoundaryRule
from l4.agents.runtime import L4Runtime
from l4.policies.base import register_policy
from l4.views import PolicyContext

VARIANTS: dict[str, L4Config] = {
    "l4": L4Config(),
    "l4_static": L4Config(refine=False, replan=False),
    "l4_count": L4Config(rule=BoundaryRule.COUNT, replan=False),
    "l4_memory": L4Config(rule=BoundaryRule.MEMORY, replan=False),
    "l4_rr": L4Config(agent=AgentConfig(use_bids=False, balance=False)),
    "l4_bids": L4Config(staged=False, refine=False, replan=False),
    "l4_nospill": L4Config(spill=False),
    "l4_nooverflow": L4Config(overflow=False),
    "l4_meanlat": L4Config(objective=None, stage_margin=0.0, replan_confirmations=1, spill=False),
}


def _factory(config: L4Config) -> Callable[[PolicyContext], L4Runtime]:
    def make(ctx: PolicyContext) -> L4Runtime:
        return L4Runtime(ctx, config)

    return make


for _name, _config in VARIANTS.items():
    register_policy(_name)(_factory(_config))
