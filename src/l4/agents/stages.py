"""The stage table: ordered length boundaries and which instances serve each stage.

Stage ``s`` serves current context lengths ``[b_s, b_{s+1})`` with ``b_0 = 0`` and an open last
stage. Guarantees: boundaries stay strictly increasing and positive, every stage keeps at least one
instance, and every instance belongs to exactly one stage — a move or re-plan that would break
this is refused (``apply_move`` returns False), so a late or reordered message cannot corrupt it.
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

    def __post_init__(self) -> None:
        b = self.boundaries_tokens
        if any(x <= 0 for x in b) or any(y <= x for x, y in itertools.pairwise(b)):
            raise ValidationError(f"stage boundaries must be positive and increasing, got {b}")
        stages = len(b) + 1
        if any(not 0 <= s < stages for s in self.stage_of_instance):
            raise ValidationError("an instance is assigned to a stage that does not exist")
        if set(self.stage_of_instance) != set(range(stages)):
            raise ValidationError("every stage needs at least one instance")

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

    def members(self, stage: int) -> list[int]:
        return [i for i, s in enumerate(self.stage_of_instance) if s == stage]

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
        )


def reassign(current: StageTable, counts: Sequence[int]) -> tuple[int, ...]:
    """Stage of every instance for new per-stage ``counts``, moving as few as keeps them ordered.

    Instances are ranked by their current stage (then id) and dealt to the new stages in that
    order, so an instance only moves to a neighbouring range and most stay where they are.
    """
    if sum(counts) != len(current.stage_of_instance) or any(c < 1 for c in counts):
        raise ValidationError(f"stage sizes {tuple(counts)} do not cover the instances")
    ranked = sorted(
        range(len(current.stage_of_instance)), key=lambda i: (current.stage_of_instance[i], i)
    )
    out = [0] * len(ranked)
    pos = 0
    for s, c in enumerate(counts):
        for i in ranked[pos : pos + c]:
            out[i] = s
        pos += c
    return tuple(out)
