"""The exponential grid of candidate stage boundaries (L4.md section 5).

A grid is ``0 = g_0 < g_1 < ... < g_{K-1}`` with ``g_1 = min_tokens`` and ``m`` geometric
sub-steps per octave up to (excluding) the model's max context. It has ``K`` buckets: bucket ``b``
covers ``[g_b, g_{b+1})`` and the last one ``[g_{K-1}, inf)``, so every length >= 0 falls in
exactly one bucket. A stage boundary is a grid index ``k`` in ``0..K``: index ``K`` stands for
infinity (the open top of the last stage). Points are whole tokens, strictly increasing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from l4.errors import ValidationError

DEFAULT_SUBSTEPS_PER_OCTAVE = 4
DEFAULT_MIN_TOKENS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthGrid:
    """Lower edges of the buckets, ``edges_tokens[0] == 0``, and the model's context limit."""

    edges_tokens: tuple[int, ...]
    max_context_tokens: int

    def __post_init__(self) -> None:
        e = self.edges_tokens
        if len(e) < 1 or e[0] != 0:
            raise ValidationError("a length grid starts at 0 tokens")
        if any(b <= a for a, b in itertools.pairwise(e)):
            raise ValidationError("length grid edges must be strictly increasing")
        if self.max_context_tokens <= e[-1]:
            raise ValidationError("the max context must lie above the last grid edge")

    @property
    def num_buckets(self) -> int:
        return len(self.edges_tokens)

    def boundary_tokens(self, k: int) -> int | None:
        """Token value of boundary index ``k`` in ``0..K``; None for ``K`` (infinity)."""
        if not 0 <= k <= self.num_buckets:
            raise ValidationError(f"boundary index {k} outside 0..{self.num_buckets}")
        return None if k == self.num_buckets else self.edges_tokens[k]

    def edges_array(self) -> npt.NDArray[np.float64]:
        """Boundary values as floats, index ``K`` holding the max context (the top, finite)."""
        return np.array((*self.edges_tokens, self.max_context_tokens), dtype=np.float64)

    def bucket_of(self, lengths_tokens: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Bucket index of each length (vectorised); negative lengths are rejected."""
        x = np.asarray(lengths_tokens)
        if x.size and float(np.min(x)) < 0:
            raise ValidationError("lengths must be >= 0")
        edges = np.asarray(self.edges_tokens, dtype=np.float64)
        return np.searchsorted(edges, x, side="right").astype(np.int64) - 1


def exponential_grid(
    max_context_tokens: int,
    *,
    substeps_per_octave: int = DEFAULT_SUBSTEPS_PER_OCTAVE,
    min_tokens: int = DEFAULT_MIN_TOKENS,
) -> LengthGrid:
    """``0, min, min * 2^(1/m), min * 2^(2/m), ...`` below ``max_context_tokens``, rounded.

    Rounding can make neighbours equal at small lengths (m large, min small); duplicates are
    dropped, so the grid may have fewer than m points in its first octaves.
    """
    if substeps_per_octave < 1:
        raise ValidationError(f"--substeps-per-octave must be >= 1, got {substeps_per_octave}")
    if min_tokens < 1:
        raise ValidationError(f"the smallest grid boundary must be >= 1 token, got {min_tokens}")
    if max_context_tokens <= min_tokens:
        raise ValidationError(
            f"max context {max_context_tokens} must exceed the smallest boundary {min_tokens}"
        )
    octaves = np.log2(max_context_tokens / min_tokens)
    steps = np.arange(int(np.ceil(octaves * substeps_per_octave)) + 1)
    points = np.round(min_tokens * np.exp2(steps / substeps_per_octave)).astype(np.int64)
    points = np.unique(points[points < max_context_tokens])
    return LengthGrid(
        edges_tokens=(0, *(int(p) for p in points)), max_context_tokens=max_context_tokens
    )
