"""An instance's load as its agent bids it, from the cost model (L4.md section 6.2).

``load_s`` = the predicted time of the instance's next decode step (its current batch, the
heterogeneity term included) + the GPU time its queued prompts still need. The first term is what
every running request pays per token; the sum is roughly how long a newcomer waits for its first
token. Both are seconds, so loads of instances with different batches compare directly.
"""

from __future__ import annotations

from l4.costmodel.step import PrefillChunk, StepCostModel
from l4.policies.base import InstanceView


class LoadModel:
    __slots__ = (
        "_attn_per_token_s",
        "_block_tokens",
        "_cost",
        "_per_seq_s",
        "_prefill_per_token_s",
    )

    def __init__(self, cost: StepCostModel, *, budget_tokens: int, block_tokens: int) -> None:
        self._cost = cost
        self._block_tokens = block_tokens
        full = cost.step_time_s(
            num_decodes=0,
            context_sum_tokens=0,
            context_max_tokens=0,
            chunks=(PrefillChunk(tokens=budget_tokens, prior_tokens=0),),
        )
        self._prefill_per_token_s = full / budget_tokens
        one = cost.step_time_s(num_decodes=1, context_sum_tokens=1, context_max_tokens=1)
        two = cost.step_time_s(num_decodes=2, context_sum_tokens=2, context_max_tokens=1)
        self._per_seq_s = max(two - one, 0.0)
        self._attn_per_token_s = (
            cost.step_time_s(num_decodes=1, context_sum_tokens=1025, context_max_tokens=1025) - one
        ) / 1024.0

    def load_s(self, view: InstanceView) -> float:
        n, total, longest = view.decode_length_stats()
        step = self._cost.step_time_s(
            num_decodes=n, context_sum_tokens=total, context_max_tokens=longest
        )
        return step + self.queued_prefill_s(view.waiting_demand_blocks() * self._block_tokens)

    def queued_prefill_s(self, tokens: int) -> float:
        return tokens * self._prefill_per_token_s

    def decode_delta_s(self, length_tokens: int) -> float:
        """What one decoding request of this length adds to every step (heterogeneity aside)."""
        return self._per_seq_s + self._attn_per_token_s * length_tokens
