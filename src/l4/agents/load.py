"""An instance's load as its agent bids it, from the cost model (L4.md section 6.2).

Two parts, both in seconds:

* ``decode_s``: the predicted time of the instance's next decode step (its current batch, the
  heterogeneity term included) — what every running request pays per token;
* ``prefill_s``: the GPU time its pending prefill still needs — queued prompts and the unfinished
  chunks of prompts being prefilled (a 100K-token prompt half done is most of an instance's
  near future), linear and causal-attention terms both.

``Load.total_s`` = their sum: roughly how long a newcomer waits for its first token. Bids rank
by it; balancing compares the parts separately (queued requests move for ``prefill_s``, decoding
ones for ``decode_s``).
"""

from __future__ import annotations

from dataclasses import dataclass

from l4.costmodel.step import PrefillChunk, StepCostModel
from l4.views import InstanceView

_MEMO_SIZE = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    decode_s: float
    prefill_s: float

    @property
    def total_s(self) -> float:
        return self.decode_s + self.prefill_s


class LoadModel:
    __slots__ = (
        "_attn_per_token_s",
        "_cost",
        "_pair_s",
        "_per_seq_s",
        "_prefill_per_token_s",
        "_steps",
    )

    def __init__(self, cost: StepCostModel, *, budget_tokens: int) -> None:
        self._cost = cost
        self._steps: dict[tuple[int, int, int], float] = {}
        full = cost.step_time_s(
            num_decodes=0,
            context_sum_tokens=0,
            context_max_tokens=0,
            chunks=(PrefillChunk(tokens=budget_tokens, prior_tokens=0),),
        )
        # Per token at full chunks, without the causal-attention part (counted by pairs).
        pairs_in_full = budget_tokens * (budget_tokens + 1) / 2
        # Per query-key pair: two full chunks a chunk of prior tokens apart. (A one-token chunk
        # would time the attention kernel's critical path, not its work.)
        near = cost.prefill_attention_s(PrefillChunk(tokens=budget_tokens, prior_tokens=0))
        far = cost.prefill_attention_s(
            PrefillChunk(tokens=budget_tokens, prior_tokens=budget_tokens)
        )
        self._pair_s = max(far - near, 0.0) / budget_tokens**2
        self._prefill_per_token_s = max(full - self._pair_s * pairs_in_full, 0.0) / budget_tokens
        step1 = cost.step_time_s(num_decodes=1, context_sum_tokens=1, context_max_tokens=1)
        step2 = cost.step_time_s(num_decodes=2, context_sum_tokens=2, context_max_tokens=1)
        self._per_seq_s = max(step2 - step1, 0.0)
        long1 = cost.step_time_s(num_decodes=1, context_sum_tokens=1025, context_max_tokens=1025)
        self._attn_per_token_s = (long1 - step1) / 1024.0

    def of(self, view: InstanceView) -> Load:
        stats = view.decode_length_stats()
        # Every bid, report and balance check of an instance between two of its steps asks for
        # the same step: memoised (a pure function of the three numbers).
        step = self._steps.get(stats)
        if step is None:
            if len(self._steps) >= _MEMO_SIZE:
                self._steps.clear()
            n, total, longest = stats
            step = self._steps[stats] = self._cost.step_time_s(
                num_decodes=n, context_sum_tokens=total, context_max_tokens=longest
            )
        tokens, pairs = view.pending_prefill()
        return Load(decode_s=step, prefill_s=self.prefill_s(tokens, pairs))

    def prefill_s(self, tokens: float, pairs: float) -> float:
        return tokens * self._prefill_per_token_s + pairs * self._pair_s

    def prompt_s(self, tokens: int) -> float:
        """Prefill time of one whole prompt of ``tokens`` (what moving a queued one shifts)."""
        return self.prefill_s(tokens, tokens * tokens / 2)

    def decode_delta_s(self, length_tokens: int) -> float:
        """What one decoding request of this length adds to every step (heterogeneity aside)."""
        return self._per_seq_s + self._attn_per_token_s * length_tokens
