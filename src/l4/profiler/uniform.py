"""Uniform batches: attention throughput at long contexts, against a profile's attention terms.

Pure (numpy, no torch). A ``UniformShape`` is either ``n`` decodes all at one context length or
one prefill chunk after some cached tokens. Its row says what the kernel moved and computed per
second (KV bytes read once, attention FLOPs: 2 for q.k and 2 for p.v per query, key and head
dimension, causal for the chunk) and what the profile's per-layer terms predict:

    decode   base_s + per_seq_s n + n L kv_bytes_per_token_per_layer / bytes_per_s
    prefill  base_s + per_token_s c + per_token_context_s c (p + (c + 1) / 2)

the forms ``l4.costmodel.StepCostModel`` charges. ``fit_terms`` refits those forms to measured
rows (relative least squares), which is how a measurement checks the derived H100 terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from l4.costmodel.alpha_fit import US, rel_error
from l4.costmodel.profile import Profile
from l4.errors import ValidationError
from l4.profiler.grid import BatchLayout, HeadShape, PrefillSpec

DECODE, PREFILL = "decode", "prefill"
UNIFORM_COLUMNS = (
    "kind",
    "n",
    "context",
    "chunk",
    "prior",
    "t_us",
    "kv_bytes",
    "kv_bytes_per_s",
    "flops",
    "flops_per_s",
    "profile_t_us",
    "t_over_profile",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class UniformShape:
    """``num_decodes`` decodes at ``context_tokens`` each, or (``num_decodes`` = 0) one prefill
    chunk of ``chunk_tokens`` after ``prior_tokens`` cached ones."""

    num_decodes: int = 0
    context_tokens: int = 0
    chunk_tokens: int = 0
    prior_tokens: int = 0

    def __post_init__(self) -> None:
        decode = self.num_decodes > 0 and self.context_tokens > 0 and self.chunk_tokens == 0
        prefill = self.num_decodes == 0 and self.context_tokens == 0 and self.chunk_tokens > 0
        if not (decode or prefill) or self.prior_tokens < 0 or (decode and self.prior_tokens):
            raise ValidationError(f"a uniform shape is decodes or one prefill chunk, got {self}")

    @property
    def kind(self) -> str:
        return DECODE if self.num_decodes else PREFILL

    @property
    def attended_keys(self) -> float:
        """Query x key pairs per head: every decode sees its context; the chunk is causal."""
        if self.num_decodes:
            return float(self.num_decodes * self.context_tokens)
        c = self.chunk_tokens
        return c * (self.prior_tokens + (c + 1) / 2)

    @property
    def kv_tokens(self) -> int:
        """KV tokens read at least once."""
        if self.num_decodes:
            return self.num_decodes * self.context_tokens
        return self.prior_tokens + self.chunk_tokens

    def layout(self) -> BatchLayout:
        if self.num_decodes:
            return BatchLayout(decode_kv_tokens=(self.context_tokens,) * self.num_decodes)
        return BatchLayout(
            decode_kv_tokens=(),
            prefill=PrefillSpec(chunk_tokens=self.chunk_tokens, prior_tokens=self.prior_tokens),
        )


def uniform_shapes(
    *,
    decodes: Sequence[int],
    contexts: Sequence[int],
    chunks: Sequence[int],
    priors: Sequence[int],
) -> tuple[UniformShape, ...]:
    """Every decode batch (n x context) and every prefill chunk (chunk x prior)."""
    dec = [UniformShape(num_decodes=n, context_tokens=c) for n in decodes for c in contexts]
    pre = [UniformShape(chunk_tokens=c, prior_tokens=p) for c in chunks for p in priors]
    return (*dec, *pre)


def profile_time_s(shape: UniformShape, profile: Profile) -> float:
    """What ``profile`` charges one layer for ``shape`` (the StepCostModel forms)."""
    if shape.num_decodes:
        d = profile.decode_attention
        per_token_s = profile.model.kv_bytes_per_token_per_layer / d.bytes_per_s
        return d.base_s + d.per_seq_s * shape.num_decodes + shape.kv_tokens * per_token_s
    p = profile.prefill_attention
    return (
        p.base_s
        + p.per_token_s * shape.chunk_tokens
        + p.per_token_context_s * (shape.attended_keys)
    )


def uniform_record(
    shape: UniformShape, t_s: float, head: HeadShape, element_bytes: int, profile: Profile
) -> dict[str, str]:
    kv_bytes = shape.kv_tokens * head.kv_bytes_per_token(element_bytes)
    flops = 4.0 * shape.attended_keys * head.num_q_heads * head.head_dim
    predicted = profile_time_s(shape, profile)
    return {
        "kind": shape.kind,
        "n": str(shape.num_decodes),
        "context": str(shape.context_tokens),
        "chunk": str(shape.chunk_tokens),
        "prior": str(shape.prior_tokens),
        "t_us": str(round(t_s / US, 3)),
        "kv_bytes": str(kv_bytes),
        "kv_bytes_per_s": f"{kv_bytes / t_s:.6g}",
        "flops": f"{flops:.6g}",
        "flops_per_s": f"{flops / t_s:.6g}",
        "profile_t_us": str(round(predicted / US, 3)),
        "t_over_profile": str(round(t_s / predicted, 4)),
    }


def _relative_lstsq(features: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Coefficients x of t ~ features @ x minimising the relative residuals."""
    x, *_ = np.linalg.lstsq(features / t[:, None], np.ones_like(t), rcond=None)
    return np.asarray(x, dtype=np.float64)


def fit_terms(
    shapes: Sequence[UniformShape], times_s: Sequence[float], head: HeadShape, element_bytes: int
) -> dict[str, Any]:
    """The profile forms refitted to measured uniform batches, per kind (where it has >= 3
    distinct rows): decode ``base_s``, ``per_seq_s``, ``bytes_per_s``; prefill ``base_s``,
    ``per_token_s``, ``per_token_context_s``; each with its relative error. Unconstrained, so a
    negative term says the form does not describe the kernel there."""
    out: dict[str, Any] = {}
    t_all = np.asarray(times_s, dtype=np.float64)
    for kind in (DECODE, PREFILL):
        idx = [i for i, s in enumerate(shapes) if s.kind == kind]
        if len(idx) < 3:
            continue
        sel = [shapes[i] for i in idx]
        t = t_all[idx]
        if kind == DECODE:
            kv = np.array([s.kv_tokens * head.kv_bytes_per_token(element_bytes) for s in sel])
            feats = np.column_stack([np.ones(len(sel)), [s.num_decodes for s in sel], kv])
        else:
            feats = np.column_stack(
                [np.ones(len(sel)), [s.chunk_tokens for s in sel], [s.attended_keys for s in sel]]
            )
        if np.linalg.matrix_rank(feats) < 3:
            continue
        x = _relative_lstsq(feats, t)
        fit: dict[str, Any] = {"base_s": float(x[0])}
        if kind == DECODE:
            fit["per_seq_s"] = float(x[1])
            fit["bytes_per_s"] = float(1.0 / x[2]) if x[2] > 0 else None
        else:
            fit["per_token_s"] = float(x[1])
            fit["per_token_context_s"] = float(x[2])
        fit["error"] = rel_error(feats @ x, t)
        out[kind] = fit
    return out
