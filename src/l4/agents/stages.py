"""The stage table: ordered length boundaries and which instances serve each stage.

Stage ``s`` serves current context lengths ``[b_s, b_{s+1})`` with ``b_0 = 0`` and an open last
stage. Instances in ``out`` are out of service (a failed engine behind the gateway): they keep a
nominal stage but are nobody's member. Guarantees: boundaries stay strictly increasing and
positive, every stage keeps at least one serving instance (unless every instance is out), and
every serving instance belongs to exactly one stage — a move or re-plan that would break this is
refused (``with_move`` returns None), so a late or reordered message cannot corrupt it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from l4.core.planner import Plan
from l4.errors import ValidationError


@dataclass(frozen=True, slots=True, kw_only=True)
class StageTable:
    boundaries_tokens: tuple[int, ...]  # b_1 < ... < b_{N-1}
    stage_of_instance: tuple[int, ...]
    version: int = 0
    out: frozenset[int] = frozenset()  # instances out of service

    def __post_init__(self) -> None:
        b = self.boundaries_tokens
        if any(x <= 0 for x in b) or any(y <= x for x, y in itertools.pairwise(b)):
            raise ValidationError(f"stage boundaries must be positive and increasing, got {b}")
        stages = len(b) + 1
        if any(not 0 <= s < stages for s in self.stage_of_instance):
            raise ValidationError("an instance is assigned to a stage that does not exist")
        serving = {s for i, s in enumerate(self.stage_of_instance) if i not in self.out}
        if serving != set(range(stages)) and len(self.out) < len(self.stage_of_instance):
            raise ValidationError("every stage needs at least one serving instance")

    @classmethod
    def from_plan(cls, plan: Plan, version: int = 0) -> StageTable:
        """Stages in order, instances assigned to them in id order."""
        stage_of: list[int] = []
        for s, st in enumerate(plan.stages):
            stage_of.extend([s] * st.num_instances)
        return cls(
            boundaries_tokens=plan.boundaries_tokens,
            stage_of_instance=tuple(stage_of),
            version=version,
        )

    @classmethod
    def single(cls, num_instances: int) -> StageTable:
        return cls(boundaries_tokens=(), stage_of_instance=(0,) * num_instances)

    @property
    def num_stages(self) -> int:
        return len(self.boundaries_tokens) + 1

    def stage_of(self, length_tokens: int) -> int:
        return bisect.bisect_right(self.boundaries_tokens, length_tokens)

    def bounds(self, stage: int) -> tuple[int, int | None]:
        """``[lo, hi)`` of a stage; ``hi`` None for the last one."""
        b = self.boundaries_tokens
        lo = 0 if stage == 0 else b[stage - 1]
        hi = b[stage] if stage < len(b) else None
        return lo, hi

    @property
    def num_serving(self) -> int:
        return len(self.stage_of_instance) - len(self.out)

    def members(self, stage: int) -> list[int]:
        return [i for i, s in enumerate(self.stage_of_instance) if s == stage and i not in self.out]

    def groups(self) -> list[list[int]]:
        return [self.members(s) for s in range(self.num_stages)]

    def with_move(self, index: int, tokens: int) -> StageTable | None:
        """Boundary ``index`` (1-based: between stages index-1 and index) at ``tokens``, or None
        when that would break the order."""
        b = list(self.boundaries_tokens)
        if not 1 <= index <= len(b):
            return None
        lo = b[index - 2] if index >= 2 else 0
        hi = b[index] if index < len(b) else None
        if tokens <= lo or (hi is not None and tokens >= hi):
            return None
        b[index - 1] = tokens
        return StageTable(
            boundaries_tokens=tuple(b),
            stage_of_instance=self.stage_of_instance,
            version=self.version,
            out=self.out,
        )


def reassign(
    current: StageTable, counts: Sequence[int], out: frozenset[int] | None = None
) -> tuple[int, ...]:
    """Stage of every instance for new per-stage ``counts``, moving as few as keeps them ordered.

    The serving instances (all but ``out``, by default the current table's) are ranked by their
    current stage (then id) and dealt to the new stages in that order, so an instance only moves
    to a neighbouring range and most stay where they are. Instances out of service keep their
    stage, capped at the new last one.
    """
    out = current.out if out is None else out
    n = len(current.stage_of_instance)
    if sum(counts) != n - len(out) or any(c < 1 for c in counts):
        raise ValidationError(f"stage sizes {tuple(counts)} do not cover the instances")
    ranked = sorted(
        (i for i in range(n) if i not in out), key=lambda i: (current.stage_of_instance[i], i)
    )
    stages = [min(s, len(counts) - 1) for s in current.stage_of_instance]
    pos = 0
    for s, c in enumerate(counts):
        for i in ranked[pos : pos + c]:
            stages[i] = s
        pos += c
    return tuple(stages)


def split_in_proportion(total: int, weights: Sequence[float]) -> tuple[int, ...]:
    """``total`` instances over stages in proportion to ``weights``, at least one each (largest
    remainders, ties to the earlier stage); needs ``1 <= len(weights) <= total``."""
    k = len(weights)
    if not 1 <= k <= total:
        raise ValidationError(f"cannot give {k} stages at least one of {total} instances")
    spare = total - k
    wsum = sum(weights)
    ideal = [spare * w / wsum if wsum > 0 else spare / k for w in weights]
    sizes = [1 + int(x) for x in ideal]
    order = sorted(range(k), key=lambda i: (-(ideal[i] - int(ideal[i])), i))
    for i in order[: total - sum(sizes)]:
        sizes[i] += 1
    return tuple(sizes)


def resize_stages(sizes: Sequence[int], total: int) -> tuple[int, ...]:
    """Stages of ``sizes`` instances resized to ``total`` in proportion, at least one each.

    Largest remainders on the exact quotas ``total * size / sum``, so a stage keeps what its
    share says (1:4:1 over five gives 1, 3, 1: only the stage that lost an instance changes).
    ``split_in_proportion`` deals one to each stage first and the rest by weight, a rule for
    load shares that, applied to stage sizes, moves instances between stages that lost none
    (1:4:1 over five: 2, 2, 1). Needs ``1 <= len(sizes) <= total`` and every size >= 1; ties go
    to the earlier stage."""
    k = len(sizes)
    if not 1 <= k <= total or any(n < 1 for n in sizes):
        raise ValidationError(f"cannot resize stages of {list(sizes)} to {total} instances")
    whole = sum(sizes)
    quota = [total * n / whole for n in sizes]
    out = [max(1, int(q)) for q in quota]
    while sum(out) > total:  # the floors of one were raised: take back from the most over quota
        i = max((i for i in range(k) if out[i] > 1), key=lambda i: (out[i] - quota[i], i))
        out[i] -= 1
    for i in sorted(range(k), key=lambda i: (-(quota[i] - out[i]), i))[: total - sum(out)]:
        out[i] += 1
    return tuple(out)
