"""`llumnix`: Llumnix (Sun et al., OSDI'24) with the defaults of its public code.

Llumnix measures an instance by its *freeness*: KV blocks still free after the *virtual usage*
of its requests, per request, i.e. roughly how many decode steps the batch can still run before
memory runs out. Queued requests count as virtual usage, so an instance with a long queue looks
full even while its physical memory is free. Arrivals go to the freest instance; every polling
interval the least free instances migrate one running request each to the freest ones.

What follows the Llumnix v0 code (github.com/AlibabaPAI/llumnix at commit 0b48bbcf, August 2024,
over vLLM 0.4.2; the same algorithm as the OSDI artifact github.com/alibaba/llm-scheduling-artifact;
defaults from that commit's `EngineManagerArgs`):

* dispatch ("load" policy, load metric "remaining_steps"): the instance with the highest
  ``(free - blocks of all queued prompts) / (running + queued)``; an instance with no request is
  infinitely free (`DispatchAndScalingLoadComputation`).
* migration load with defragmentation on (`enable_defrag=True`, the default and the setting of
  every Llumnix run in the artifact): ``(free - blocks of the head-of-line prompt) /
  (running + 1 if anything is queued)`` (`MigrationLoadComputation`).
* pairing ("defrag_constrained", the default): Llumnix compares *loads*, and its load is the
  negated freeness (``instance_load = -(free / requests)``, `MigrationLoadComputation`).
  Sources are instances whose load exceeds `migrate_out_threshold` (3.0), i.e. whose freeness
  is below **-3** blocks per request: the head-of-line prompt no longer fits, so the instance is
  about to preempt or is already stalling admissions; or instances with preempted requests
  waiting ("killed"). Destinations are instances with load below it (freeness above -3) and none
  killed. The least free source is paired with the freest destination, the next with the next,
  and so on (`LoadFilter` in `migration_filter.py`, `DefragConstrained` in
  `migration_policy.py`).
* every pair moves one request, the shortest running decode ("SJF": least context, the cheapest
  to copy); an instance takes part in one migration at a time (the manager's
  `instance_migrating` flags), checked every `polling_interval` of 50 ms with
  `pair_migration_frequency` 1.

Where the simulated engine differs from Llumnix's vLLM v0, the choice that keeps Llumnix's
intent and can only help it:

* load is read live at every arrival (Llumnix polls every 50 ms and dispatches a burst on stale
  numbers); a queued prompt counts as virtual usage the moment it is admitted.
* vLLM v0 allocates a prompt's blocks at admission, the simulated engine chunk by chunk; the
  blocks a running prefill still needs are counted as used, as v0 would hold them.
* no watermark (vLLM v1, which the simulated engine follows, has none).
* the migration mechanism is the deployment's (`PolicyContext.migration`), as for every policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from l4.errors import ValidationError
from l4.instance.sequence import SeqState
from l4.instance.sequence import Sequence as Seq
from l4.policies.base import one_group, register_policy
from l4.request import RequestSpec
from l4.views import ClusterView, InstanceView, PolicyContext

MIGRATION_REASON = "llumnix"
# How long a migration may stay unresolved before its instances are freed again. A completed one
# is seen exactly (the request shows up at the destination); only an aborted kv-transfer (the
# request was preempted, or the destination filled up, during the copy) leaves no trace, and the
# source's next step boundary, which the abort waits for, comes well within this.
_ABORT_GRACE_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LlumnixConfig:
    """Llumnix v0's defaults (`llumnix/arg_utils.py`, `EngineManagerArgs`)."""

    polling_interval_s: float = 0.05  # --polling-interval
    pair_migration_frequency: int = 1  # --pair-migration-frequency: pair every N polls
    # --migrate-out-threshold, in Llumnix's load units (load = -freeness): an instance migrates
    # out when its load exceeds it, i.e. when its freeness drops below -threshold blocks.
    migrate_out_threshold: float = 3.0
    enable_migration: bool = True  # --enable-migration
    enable_defrag: bool = True  # --enable-defrag

    def __post_init__(self) -> None:
        if not self.polling_interval_s > 0:
            raise ValidationError("Llumnix polling interval must be > 0 s")
        if self.pair_migration_frequency < 1:
            raise ValidationError("Llumnix pair migration frequency must be >= 1")


@dataclass(slots=True)
class _InFlight:
    seq: Seq
    src: int
    dst: int
    give_up_s: float


class Llumnix:
    """Freeness dispatch plus load-balancing migration, as Llumnix v0 ships it."""

    def __init__(self, ctx: PolicyContext, config: LlumnixConfig | None = None) -> None:
        self.config = config or LlumnixConfig()
        self.tick_interval_s: float | None = (
            self.config.polling_interval_s if self.config.enable_migration else None
        )
        self._n = ctx.num_instances
        self._bs = ctx.instance_config.block_size_tokens
        self._migration = ctx.migration
        self._kv_bytes_per_token = ctx.profile.model.kv_bytes_per_token
        self._polls = 0
        self._in_flight: list[_InFlight] = []

    # ---- the load metrics ---------------------------------------------------------------------
    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self._bs)

    def _free_blocks(self, inst: InstanceView) -> int:
        """Free KV blocks, less what running prefills will still allocate (held up front in v0)."""
        pending = 0
        for seq in inst.running():
            if seq.state is SeqState.PREFILL:
                pending += self._blocks(seq.prefill_target_tokens) - seq.blocks
        return inst.free_blocks() - pending

    def dispatch_freeness(self, inst: InstanceView) -> float:
        """Free blocks per request once every queued prompt is counted as used."""
        requests = inst.num_running + inst.num_waiting
        if requests == 0:
            return math.inf
        # The demand counts the queued prompts and what running prefills will still allocate.
        return (inst.free_blocks() - inst.waiting_demand_blocks()) / requests

    def migration_freeness(self, inst: InstanceView) -> float:
        """Free blocks per request with only the head-of-line prompt as virtual usage (defrag)."""
        if not self.config.enable_defrag:
            requests = inst.num_running
            free = self._free_blocks(inst)
        else:
            waiting = inst.waiting()
            requests = inst.num_running + (1 if waiting else 0)
            head = self._blocks(waiting[0].prefill_target_tokens) if waiting else 0
            free = self._free_blocks(inst) - head
        if requests == 0:
            return math.inf
        return free / requests

    @staticmethod
    def killed(inst: InstanceView) -> int:
        """Preempted requests waiting to be recomputed (Llumnix's `num_killed_requests`)."""
        return sum(1 for seq in inst.waiting() if seq.preemptions > 0)

    # ---- Policy -------------------------------------------------------------------------------
    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int:
        best_i, best = 0, -math.inf
        for i in range(self._n):
            inst = cluster.instance(i)
            if not inst.available:
                continue  # out of service (behind the gateway)
            f = self.dispatch_freeness(inst)
            if f > best:  # ties go to the lowest id, as a stable sort would
                best, best_i = f, i
        return best_i

    def on_tick(self, cluster: ClusterView, now_s: float) -> None:
        self._polls += 1
        if self._polls % self.config.pair_migration_frequency:
            return
        busy = self._busy_instances(now_s)
        for src, dst in self.pairs(cluster):
            if src in busy or dst in busy:
                continue
            found = self._shortest_decode(cluster.instance(src))
            if found is None:
                continue
            seq, length = found
            if cluster.migrate(seq, src, dst, MIGRATION_REASON):
                busy.update((src, dst))
                give_up_s = now_s + self._expected_s(length)
                self._in_flight.append(_InFlight(seq=seq, src=src, dst=dst, give_up_s=give_up_s))

    def groups(self) -> list[list[int]]:
        return one_group(self._n)

    # ---- migration ----------------------------------------------------------------------------
    def pairs(self, cluster: ClusterView) -> list[tuple[int, int]]:
        """(source, destination) pairs, least free source with the freest destination."""
        threshold = self.config.migrate_out_threshold
        srcs: list[tuple[float, int]] = []
        dsts: list[tuple[float, int]] = []
        for i in range(self._n):
            inst = cluster.instance(i)
            load = -self.migration_freeness(inst)  # Llumnix's instance_load_migrate
            killed = self.killed(inst)
            if killed > 0 or load > threshold:
                srcs.append((-load, i))
            elif load < threshold and inst.available:
                dsts.append((load, i))
        srcs.sort()
        dsts.sort()
        return [(s, d) for (_, s), (_, d) in zip(srcs, dsts, strict=False)]

    @staticmethod
    def _shortest_decode(inst: InstanceView) -> tuple[Seq, int] | None:
        """The decoding request with the least context and its length ("SJF")."""
        best: tuple[Seq, int] | None = None
        for seq in inst.running():
            if seq.state is not SeqState.DECODE:
                continue
            length = inst.length_of(seq)
            if best is None or length < best[1]:
                best = (seq, length)
        return best

    def _expected_s(self, context_tokens: int) -> float:
        m = self._migration
        copy_s = context_tokens * self._kv_bytes_per_token / m.bandwidth_bytes_per_s
        return copy_s + m.downtime_base_s + m.replay_overhead_s + _ABORT_GRACE_S

    def _busy_instances(self, now_s: float) -> set[int]:
        """Instances still in a migration; drop the ones that completed or were given up."""
        still: list[_InFlight] = []
        for mig in self._in_flight:
            seq = mig.seq
            if seq.state is SeqState.FINISHED:
                continue
            if (
                seq.instances
                and seq.instances[-1] == mig.dst
                and seq.state is not (SeqState.DETACHED)
            ):
                continue  # arrived (attached, or queued for replay) at the destination
            if seq.state is not SeqState.DETACHED and now_s > mig.give_up_s:
                continue  # aborted at the source
            still.append(mig)
        self._in_flight = still
        busy: set[int] = set()
        for mig in still:
            busy.update((mig.src, mig.dst))
        return busy


@register_policy("llumnix")
def _make(ctx: PolicyContext) -> Llumnix:
    return Llumnix(ctx)
