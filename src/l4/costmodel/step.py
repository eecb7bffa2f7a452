"""Step time of one engine iteration from its batch composition (L4.md section 8).

    t = fixed + per_seq * seqs + linear(tokens) + layers * attention

    decode-only step:  attention = u(n, l_mean) + alpha(n) * (u(n, l_max) - u(n, l_mean))
                       u(n, l)   = base + per_seq * n + n * l * kv_bytes_per_token_per_layer / bw
    step with chunks:  attention = ONE kernel for prefill and decode rows (``MixedAttention``):
                       base + max(critical path, chunk work + per_seq * n + W(n, l_mean)
                                  + alpha_with_prefill(n) * (W(n, l_max) - W(n, l_mean)))

vLLM runs a step's prefill and decode rows in one varlen attention call; summing a prefill kernel
and a decode kernel under-predicted such steps by about a third (calibration.md). A profile
without a mixed fit falls back to that sum (``prefill_attention`` per chunk + ``u``).

Guarantee the instance relies on: for a fixed set of decodes and no prefill, the step time is an
affine function of the step index (every context grows by one token per step, so the context sum
grows by n and the maximum by one). That lets the instance advance many identical decode steps in
closed form instead of one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from l4.costmodel.profile import Profile


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefillChunk:
    """A chunk of `tokens` prompt tokens computed after `prior_tokens` already in the KV cache."""

    tokens: int
    prior_tokens: int


class StepCostModel:
    """Pure function object: batch composition in, seconds out."""

    __slots__ = (
        "_alpha",
        "_attn_per_token_s",
        "_d_base",
        "_d_per_seq",
        "_fixed_s",
        "_layers",
        "_linear",
        "_mixed",
        "_p_base",
        "_p_ctx",
        "_p_tok",
        "_per_seq_s",
        "profile",
    )

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        layers = profile.model.num_layers
        d = profile.decode_attention
        p = profile.prefill_attention
        self._layers = layers
        self._fixed_s = profile.step_fixed_s
        self._per_seq_s = profile.step_per_seq_s
        self._linear = profile.linear
        self._alpha = profile.alpha
        self._mixed = profile.mixed_attention
        # All layers folded in: seconds per (sequence x context token) of decode attention.
        self._attn_per_token_s = layers * profile.model.kv_bytes_per_token_per_layer / d.bytes_per_s
        self._d_base = layers * d.base_s
        self._d_per_seq = layers * d.per_seq_s
        self._p_base = layers * p.base_s
        self._p_tok = layers * p.per_token_s
        self._p_ctx = layers * p.per_token_context_s

    def decode_attention_s(
        self, num_decodes: int, context_sum_tokens: int, context_max_tokens: int, has_prefill: bool
    ) -> float:
        """Decode attention of all layers, heterogeneity included."""
        if num_decodes == 0:
            return 0.0
        uniform = self._d_base + self._d_per_seq * num_decodes
        mean_part = context_sum_tokens * self._attn_per_token_s
        max_part = num_decodes * context_max_tokens * self._attn_per_token_s
        alpha = self._alpha(num_decodes, has_prefill)
        return uniform + mean_part + alpha * (max_part - mean_part)

    def prefill_attention_s(self, chunk: PrefillChunk) -> float:
        """Attention of all layers of a step carrying only ``chunk``."""
        if self._mixed is not None:
            return self._mixed_attention_s(0, 0, 0, (chunk,))
        c = chunk.tokens
        return self._p_base + self._p_tok * c + self._p_ctx * c * (chunk.prior_tokens + (c + 1) / 2)

    def _mixed_attention_s(
        self,
        num_decodes: int,
        context_sum_tokens: int,
        context_max_tokens: int,
        chunks: Sequence[PrefillChunk],
    ) -> float:
        """One varlen kernel over the chunks and the decodes, all layers (module docstring)."""
        m = self._mixed
        assert m is not None
        span = 0
        work = 0.0
        for chunk in chunks:
            c, prior = chunk.tokens, chunk.prior_tokens
            span = max(span, prior + c)
            work += m.per_token_s * c + m.per_token_context_s * c * (prior + (c + 1) / 2)
        if num_decodes:
            w_mean = m.decode_work_s(num_decodes, context_sum_tokens / num_decodes)
            w_max = m.decode_work_s(num_decodes, context_max_tokens)
            alpha = self._alpha(num_decodes, True)
            work += m.per_seq_s * num_decodes + w_mean + alpha * (w_max - w_mean)
        return self._layers * (m.base_s + max(m.path_s_per_token * span, work))

    def step_time_s(
        self,
        *,
        num_decodes: int,
        context_sum_tokens: int,
        context_max_tokens: int,
        chunks: Sequence[PrefillChunk] = (),
    ) -> float:
        """Seconds for one step: `num_decodes` decodes (context sum and max) plus prefill chunks."""
        tokens = num_decodes + sum(chunk.tokens for chunk in chunks)
        if tokens == 0:
            return 0.0
        if chunks and self._mixed is not None:
            attention = self._mixed_attention_s(
                num_decodes, context_sum_tokens, context_max_tokens, chunks
            )
        else:
            attention = sum(self.prefill_attention_s(c) for c in chunks) + self.decode_attention_s(
                num_decodes, context_sum_tokens, context_max_tokens, bool(chunks)
            )
        seqs = num_decodes + len(chunks)
        return self._fixed_s + self._per_seq_s * seqs + self._linear(tokens) + attention

    def unloaded_latency_s(
        self, input_tokens: int, output_tokens: int, budget_tokens: int
    ) -> tuple[float, float]:
        """(TTFT, TPOT) of a request alone on an idle instance: the SLO reference."""
        ttft = 0.0
        done = 0
        while done < input_tokens:
            c = min(budget_tokens, input_tokens - done)
            ttft += self.step_time_s(
                num_decodes=0,
                context_sum_tokens=0,
                context_max_tokens=0,
                chunks=(PrefillChunk(tokens=c, prior_tokens=done),),
            )
            done += c
        if output_tokens <= 1:
            return ttft, 0.0
        # Decode steps are affine in the step index: the mean step is the step at the midpoint.
        first = self.step_time_s(
            num_decodes=1, context_sum_tokens=input_tokens + 1, context_max_tokens=input_tokens + 1
        )
        last = self.step_time_s(
            num_decodes=1,
            context_sum_tokens=input_tokens + output_tokens - 1,
            context_max_tokens=input_tokens + output_tokens - 1,
        )
        return ttft, (first + last) / 2
