"""What a policy or an agent observes and may do, and the deployment it is built for.

These protocols sit below both the policies and the agents (and below the simulator and the
gateway, which implement them): the simulator's `Instance` is an `InstanceView` and its
`Simulation` a `ClusterView`; the gateway implements the same two over its book of in-flight
requests and each backend's scraped metrics. Nothing here knows which one is on the other side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from l4.core.migration import MigrationConfig
from l4.core.summary import WorkloadSummary
from l4.costmodel.profile import Profile
from l4.costmodel.step import StepCostModel
from l4.instance.config import InstanceConfig
from l4.instance.sequence import Sequence as Seq


class InstanceView(Protocol):
    """Read-only state of one instance, as a router may observe it."""

    @property
    def instance_id(self) -> int: ...
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
