"""What the attention profiler times: the grid of batch shapes and their paged-KV layouts.

Pure (numpy, no torch). A grid point is a ``SkewShape``; each point is timed as three batches
(``BatchKind``): the mixed batch, every decode at the mean length, every decode at the long
length, all with the same prefill chunk. ``page_table`` places a batch in a KV pool of fixed size
the way a paged engine does after some churn: pages in random order, never shared within a batch
while the pool lasts. ``window_starts`` places it as one contiguous window per sequence (for a
kernel without block tables): back to back while the batch fits. Batches larger than the pool
(the uniform-at-max reference of a long context, which no engine could hold) reuse pages or
overlap windows; random placement keeps two sequences from streaming the same bytes at the same
moment, so the reuse does not turn into cache hits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from l4.costmodel.alpha_fit import SkewShape
from l4.costmodel.profile import ModelConstants
from l4.errors import ValidationError


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadShape:
    """The attention shape of one layer (what decode attention's cost depends on)."""

    num_q_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        if min(self.num_q_heads, self.num_kv_heads, self.head_dim) < 1:
            raise ValidationError("head counts and head dim must be >= 1")
        if self.num_q_heads % self.num_kv_heads:
            raise ValidationError("query heads must be a multiple of KV heads (GQA)")

    @classmethod
    def from_model(cls, model: ModelConstants) -> HeadShape:
        return cls(
            num_q_heads=model.num_q_heads,
            num_kv_heads=model.num_kv_heads,
            head_dim=model.head_dim,
        )

    def kv_bytes_per_token(self, element_bytes: int) -> int:
        """K and V of one token in one layer."""
        return 2 * self.num_kv_heads * self.head_dim * element_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefillSpec:
    """A prefill chunk of ``chunk_tokens`` after ``prior_tokens`` cached ones; (0, 0) is none."""

    chunk_tokens: int
    prior_tokens: int = 0


NO_PREFILL = PrefillSpec(chunk_tokens=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class GridSpec:
    """The axes of the sweep. Points whose mixed batch needs more than ``max_batch_tokens`` of KV
    (decodes plus the prefill's context) are dropped: no engine instance could batch them."""

    num_decodes: tuple[int, ...]
    short_tokens: tuple[int, ...]
    long_tokens: tuple[int, ...]
    num_long: tuple[int, ...] = (1,)
    """Long requests per batch as counts (one long request is the worst case for alpha)."""
    long_shares: tuple[float, ...] = ()
    """... and as shares of n (rounded, kept in [1, n - 1])."""
    prefills: tuple[PrefillSpec, ...] = (NO_PREFILL,)
    max_batch_tokens: int = 1 << 62

    def __post_init__(self) -> None:
        axes = (self.num_decodes, self.short_tokens, self.long_tokens, self.prefills)
        if any(not axis for axis in axes):
            raise ValidationError("every grid axis needs at least one value")
        if not self.num_long and not self.long_shares:
            raise ValidationError("give --num-long or --long-shares")
        if min((*self.num_decodes, *self.short_tokens, *self.long_tokens)) < 1:
            raise ValidationError("decode counts and lengths must be >= 1")
        if self.num_long and min(self.num_long) < 1:
            raise ValidationError("--num-long values must be >= 1")
        if any(not 0.0 < s < 1.0 for s in self.long_shares):
            raise ValidationError("--long-shares values must be strictly between 0 and 1")
        for p in self.prefills:
            if p.chunk_tokens < 0 or p.prior_tokens < 0 or (p.prior_tokens and not p.chunk_tokens):
                raise ValidationError("a prefill is CHUNK:PRIOR with CHUNK >= 1 (0:0 for none)")
        if self.max_batch_tokens < 1:
            raise ValidationError("--max-batch-tokens must be >= 1")


def long_counts(spec: GridSpec, num_decodes: int) -> tuple[int, ...]:
    counts = {c for c in spec.num_long if c < num_decodes}
    counts |= {min(num_decodes - 1, max(1, round(s * num_decodes))) for s in spec.long_shares}
    return tuple(sorted(c for c in counts if 1 <= c < num_decodes))


def grid_points(spec: GridSpec) -> tuple[SkewShape, ...]:
    """Every heterogeneous shape of the grid, in a stable order (prefill, n, lengths, nb)."""
    points: list[SkewShape] = []
    for prefill in dict.fromkeys(spec.prefills):
        for n in sorted(set(spec.num_decodes)):
            for short in sorted(set(spec.short_tokens)):
                for long in sorted(set(spec.long_tokens)):
                    if long <= short:
                        continue
                    for nb in long_counts(spec, n):
                        shape = SkewShape(
                            num_decodes=n,
                            num_long=nb,
                            short_tokens=short,
                            long_tokens=long,
                            prefill_chunk_tokens=prefill.chunk_tokens,
                            prefill_prior_tokens=prefill.prior_tokens,
                        )
                        if batch_layout(shape, BatchKind.SKEW).total_kv_tokens <= (
                            spec.max_batch_tokens
                        ):
                            points.append(shape)
    return tuple(points)


class BatchKind(StrEnum):
    SKEW = "skew"
    MEAN = "mean"
    MAX = "max"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchLayout:
    """One engine step's attention: a query token per decode, then the prefill chunk if any."""

    decode_kv_tokens: tuple[int, ...]
    prefill: PrefillSpec = NO_PREFILL
    query_tokens: tuple[int, ...] = field(init=False)
    kv_tokens: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.decode_kv_tokens and not self.prefill.chunk_tokens:
            raise ValidationError("a batch needs decodes or a prefill chunk")
        if self.decode_kv_tokens and min(self.decode_kv_tokens) < 1:
            raise ValidationError("a decode needs >= 1 KV token")
        q = (1,) * len(self.decode_kv_tokens)
        kv = self.decode_kv_tokens
        if self.prefill.chunk_tokens:
            # the chunk's own K/V is written to the cache before attention reads it (vLLM v1)
            q += (self.prefill.chunk_tokens,)
            kv += (self.prefill.prior_tokens + self.prefill.chunk_tokens,)
        object.__setattr__(self, "query_tokens", q)
        object.__setattr__(self, "kv_tokens", kv)

    @property
    def total_kv_tokens(self) -> int:
        return sum(self.kv_tokens)

    @property
    def max_kv_tokens(self) -> int:
        return max(self.kv_tokens)

    @property
    def has_prefill(self) -> bool:
        return self.prefill.chunk_tokens > 0


def long_positions(num_decodes: int, num_long: int) -> tuple[int, ...]:
    """Where the long decodes sit in the batch: spread evenly, as admission order would."""
    return tuple(int((k + 0.5) * num_decodes / num_long) for k in range(num_long))


def batch_layout(shape: SkewShape, kind: BatchKind) -> BatchLayout:
    n = shape.num_decodes
    if kind is BatchKind.MEAN:
        lengths = (shape.mean_tokens,) * n
    elif kind is BatchKind.MAX:
        lengths = (shape.long_tokens,) * n
    else:
        longs = set(long_positions(n, shape.num_long))
        lengths = tuple(shape.long_tokens if i in longs else shape.short_tokens for i in range(n))
    prefill = PrefillSpec(
        chunk_tokens=shape.prefill_chunk_tokens, prior_tokens=shape.prefill_prior_tokens
    )
    return BatchLayout(decode_kv_tokens=lengths, prefill=prefill)


def pages_for(tokens: int, page_tokens: int) -> int:
    return math.ceil(tokens / page_tokens)


def pages_needed(layout: BatchLayout, page_tokens: int) -> int:
    return sum(pages_for(t, page_tokens) for t in layout.kv_tokens)


def page_table(
    kv_tokens: Sequence[int], page_tokens: int, pool_pages: int, seed: int
) -> npt.NDArray[np.int32]:
    """Physical page of each sequence's logical pages, shape (sequences, max pages), int32.

    Random pages without replacement while the pool lasts, then another random pass over the
    pool; unused slots of shorter sequences are 0 (the kernel never reads past a sequence).
    """
    if page_tokens < 1 or pool_pages < 1:
        raise ValidationError("page size and pool size must be >= 1")
    counts = [pages_for(t, page_tokens) for t in kv_tokens]
    total = sum(counts)
    rng = np.random.default_rng(seed)
    passes = max(1, math.ceil(total / pool_pages))
    flat = np.concatenate([rng.permutation(pool_pages) for _ in range(passes)])[:total]
    table = np.zeros((len(counts), max(counts, default=0)), dtype=np.int32)
    start = 0
    for i, c in enumerate(counts):
        table[i, :c] = flat[start : start + c]
        start += c
    return table


def window_starts(
    kv_tokens: Sequence[int], pool_tokens: int, seed: int
) -> tuple[npt.NDArray[np.int64], bool]:
    """First token of each sequence's contiguous window in a flat pool of ``pool_tokens``, and
    whether the windows lie back to back.

    While the batch fits, the windows follow each other from a random offset, as a contiguous
    cache lays out a batch. Otherwise (the oversized reference batches) they must overlap; their
    starts are then spread evenly over the pool, in random order, so that no two sequences,
    which a kernel walks in step, read the same bytes within ``span / n`` tokens of each other
    and turn the reuse into cache hits.
    """
    lengths = np.asarray(kv_tokens, dtype=np.int64)
    if lengths.size == 0 or lengths.min() < 1:
        raise ValidationError("every sequence needs >= 1 KV token")
    if lengths.max() > pool_tokens:
        raise ValidationError(
            f"a sequence of {int(lengths.max())} tokens does not fit a pool of {pool_tokens}"
        )
    rng = np.random.default_rng(seed)
    total = int(lengths.sum())
    if total <= pool_tokens:
        base = int(rng.integers(0, pool_tokens - total + 1))
        return base + np.concatenate(([0], np.cumsum(lengths)[:-1])), True
    n = lengths.size
    span = pool_tokens - int(lengths.max())
    slots = rng.permutation(n).astype(np.int64)
    offsets = slots * span // n
    phase = int(rng.integers(0, span - (n - 1) * span // n + 1))
    return offsets + phase, False


QUICK_GRID = GridSpec(
    num_decodes=(2, 4),
    short_tokens=(16, 48),
    long_tokens=(64, 256),
    num_long=(1,),
    long_shares=(0.5,),
    prefills=(NO_PREFILL, PrefillSpec(chunk_tokens=16, prior_tokens=32)),
)
"""Tiny shapes: the whole pipeline on a CPU in seconds (a smoke test, not a measurement)."""

FULL_GRID = GridSpec(
    num_decodes=(2, 4, 8, 16, 32, 64, 128, 256),
    short_tokens=(256, 1024, 4096),
    long_tokens=(4096, 16384, 65536, 131072),
    num_long=(1,),
    long_shares=(0.125, 0.5),
    prefills=(
        NO_PREFILL,
        PrefillSpec(chunk_tokens=128, prior_tokens=0),
        PrefillSpec(chunk_tokens=2048, prior_tokens=8192),
    ),
)
"""The GPU grid: n as in the alpha tables, contexts up to 128K, one long request or 1/8 or 1/2 of
them, decode-only steps and steps with a short fresh chunk or a long chunk deep into a prompt.
``max_batch_tokens`` is set from the profile's KV capacity at run time."""
