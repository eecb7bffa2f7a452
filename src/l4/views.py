"""What a policy or an agent observes and may do, and the deployment it is built for.

These protocols sit below both the policies and the agents (and below the simulator and the
gateway, which implement them): the simulator's `Instance` is an `InstanceView` and its
`Simulation` a `ClusterView`; the gateway implements the same two over its book of in-flight
requests and each backend's scraped metrics. Nothing here knows which one is on the other side.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

from l4.core.migration import MigrationConfig
from l4.core.summary import WorkloadSummary
from l4.costmodel.profile import Profile
from l4.costmodel.step import StepCostModel
from l4.errors import ValidationError
from l4.instance.config import InstanceConfig
from l4.instance.sequence import Sequence as Seq
from l4.offload import Offload


class InstanceView(Protocol):
    """Read-only state of one instance, as a router may observe it."""

    @property
    def instance_id(self) -> int: ...
    @property
    def available(self) -> bool:
        """False while the instance is out of service (a failed engine behind the gateway)."""
        ...

    @property
    def num_waiting(self) -> int: ...
    @property
    def num_running(self) -> int: ...
    @property
    def kv_usage(self) -> float: ...
    @property
    def released_tokens(self) -> int:
        """KV tokens freed by completed requests so far (a counter)."""
        ...

    def free_blocks(self) -> int: ...
    def waiting_demand_blocks(self) -> int: ...
    def pending_prefill(self) -> tuple[int, float]: ...
    def running(self) -> list[Seq]: ...
    def waiting(self) -> list[Seq]: ...
    def length_of(self, seq: Seq) -> int: ...
    def decode_length_stats(self) -> tuple[int, int, int]: ...


class ClusterView(Protocol):
    @property
    def num_instances(self) -> int: ...
    def instance(self, instance_id: int) -> InstanceView: ...
    def migrate(self, seq: Seq, src: int, dst: int, reason: str) -> bool:
        """Start moving `seq` from `src` to `dst`; False if refused (no room, not movable)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticPlan:
    """Length ranges fixed by the operator: stage s serves ``[b_{s-1}, b_s)`` with
    ``stage_sizes[s]`` instances (in id order). Length-aware policies use it instead of planning
    (llm-d's context-length labels, pinned L4 stages, tests)."""

    boundaries_tokens: tuple[int, ...]
    stage_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        b = self.boundaries_tokens
        if any(x <= 0 for x in b) or any(y <= x for x, y in itertools.pairwise(b)):
            raise ValidationError(f"stage boundaries must be positive and increasing, got {b}")
        if len(self.stage_sizes) != len(b) + 1:
            raise ValidationError(
                f"{len(b)} boundaries make {len(b) + 1} stages, but {len(self.stage_sizes)} "
                "stage sizes were given"
            )
        if any(n < 1 for n in self.stage_sizes):
            raise ValidationError(f"every stage needs at least one instance: {self.stage_sizes}")

    @property
    def num_instances(self) -> int:
        return sum(self.stage_sizes)

    def stage_of_instance(self) -> tuple[int, ...]:
        return tuple(s for s, n in enumerate(self.stage_sizes) for _ in range(n))


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyContext:
    num_instances: int
    profile: Profile
    cost: StepCostModel
    instance_config: InstanceConfig
    seed: int
    # What an operator plans from: the expected workload's length histogram at its expected
    # rate (the trace being served, in the simulator). None when nothing is known in advance.
    workload: WorkloadSummary | None = None
    # The migration mechanism the deployment uses; migrating baselines must use the same one.
    migration: MigrationConfig = field(default_factory=MigrationConfig)
    # Ranges the operator pinned (None: length-aware policies plan their own).
    static_plan: StaticPlan | None = None
    # Where slow pure work (a re-plan) runs; None: in the caller's thread (l4.offload).
    offload: Offload | None = None

    def __post_init__(self) -> None:
        plan = self.static_plan
        if plan is not None and plan.num_instances != self.num_instances:
            raise ValidationError(
                f"the stage sizes {plan.stage_sizes} add up to {plan.num_instances} instances, "
                f"not {self.num_instances}"
            )
