"""Discrete-event simulation of N instances behind one global policy.

Guarantees, checked at the end of every run (and after every event with `check_every_event`):
every request is finished exactly once or sits in exactly one place (a queue, a batch, or a
migration in transit); no instance ever holds more KV blocks than it has. Same inputs and seed
give the same event order (ties in time fire in scheduling order) and hence the same output.

Each instance has at most one pending step-end event; an event carries the version of the plan it
was scheduled for, so truncating a plan simply schedules a new event and the stale one is ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.costmodel.profile import Profile
from l4.costmodel.step import StepCostModel
from l4.errors import InvariantError, ValidationError
from l4.instance import Instance, InstanceConfig, SeqState
from l4.instance import Sequence as Seq
from l4.instance.engine import UNLIMITED_STEPS
from l4.metrics import ItlRecorder, RequestRecord
from l4.policies.base import AdmissionObserver, Policy
from l4.request import RequestSpec
from l4.sim.events import EventQueue
from l4.views import InstanceView

ProgressFn = Callable[[float], None]


@dataclass(slots=True)
class _Migration:
    seq: Seq
    src: int
    dst: int
    reason: str
    start_length_tokens: int
    reserved_blocks: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOutcome:
    records: tuple[RequestRecord, ...]
    itl: ItlRecorder
    output_tokens_by_instance: tuple[int, ...]
    busy_s_by_instance: tuple[float, ...]
    migrations_by_reason: dict[str, int]
    failed_migrations: int
    preemptions: int
    events: int
    engine_steps: int
    sim_end_s: float
    wall_s: float
    groups: tuple[tuple[int, ...], ...] = field(default=())


class Simulation:
    """One run of one policy over one workload. Use once."""

    def __init__(
        self,
        *,
        profile: Profile,
        instance_config: InstanceConfig,
        num_instances: int,
        policy: Policy,
        migration: MigrationConfig | None = None,
        cost: StepCostModel | None = None,
        check_every_event: bool = False,
        max_plan_steps: int = UNLIMITED_STEPS,
        tick_phase: float = 1.0,
    ) -> None:
        # The policy's first tick runs this fraction of a tick after the first arrival. A live
        # gateway ticks from its own start, so where its ticks fall between two requests' events
        # is a draw; one fixed phase makes every run of a trace act at the same moments.
        if not 0.0 < tick_phase <= 1.0:
            raise ValidationError(f"tick phase must lie in (0, 1], got {tick_phase}")
        self._tick_phase = tick_phase
        self.profile = profile
        self.cost = cost or StepCostModel(profile)
        self.policy = policy
        self._observer = policy if isinstance(policy, AdmissionObserver) else None
        self.migration = migration or MigrationConfig()
        self.itl = ItlRecorder()
        self.instances = [
            Instance(i, instance_config, self.cost, self.itl) for i in range(num_instances)
        ]
        self._queue = EventQueue()
        self._versions = [0] * num_instances
        self._pending_detach: list[list[_Migration]] = [[] for _ in range(num_instances)]
        self._pending_attach: list[list[_Migration]] = [[] for _ in range(num_instances)]
        self._in_transit: dict[int, _Migration] = {}
        self._migrating: set[int] = set()
        self._seqs: list[Seq] = []
        self._finished = 0
        self._arrived = 0
        self._migrations_by_reason: dict[str, int] = {}
        self._failed_migrations = 0
        self._check = check_every_event
        # 1 = step by step (the reference the closed-form plans are tested against).
        self._max_plan_steps = max_plan_steps
        self._kv_bytes_per_token = profile.model.kv_bytes_per_token

    # ---- ClusterView --------------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        return len(self.instances)

    @property
    def now_s(self) -> float:
        return self._queue.now_s

    def instance(self, instance_id: int) -> InstanceView:
        inst = self.instances[instance_id]
        inst.advance(self._queue.now_s)  # observe the state as of now, not of the last event
        return inst

    def migrate(self, seq: Seq, src: int, dst: int, reason: str) -> bool:
        now = self._queue.now_s
        if src == dst or seq.request_id in self._migrating:
            return False
        if seq.state in (SeqState.FINISHED, SeqState.DETACHED) or seq.instances[-1] != src:
            return False
        mig = _Migration(
            seq=seq,
            src=src,
            dst=dst,
            reason=reason,
            start_length_tokens=self.instances[src].length_of(seq),
        )
        if self.migration.mechanism is MigrationMechanism.KV_TRANSFER and seq.state is not (
            SeqState.WAITING
        ):
            if seq.state is not SeqState.DECODE:
                self._failed_migrations += 1
                return False
            blocks = self._blocks(mig.start_length_tokens + self.migration.headroom_tokens)
            if not self.instances[dst].reserve(blocks):
                self._failed_migrations += 1
                return False
            mig.reserved_blocks = blocks
            self._migrating.add(seq.request_id)
            copy_s = mig.start_length_tokens * self._kv_bytes_per_token / self._bandwidth()
            self._queue.schedule(now + copy_s, lambda t: self._request_detach(mig, t))
            return True
        self._migrating.add(seq.request_id)
        self._request_detach(mig, now)
        return True

    # ---- the run ------------------------------------------------------------------------------
    def run(
        self,
        requests: Sequence[RequestSpec],
        *,
        drain_s: float = 3600.0,
        progress: ProgressFn | None = None,
    ) -> SimOutcome:
        """Serve `requests`; stop when all finished or `drain_s` after the last arrival."""
        wall0 = time.perf_counter()
        q = self._queue
        self._seqs = [Seq(r) for r in requests]
        for seq in self._seqs:
            q.schedule(seq.spec.arrival_s, self._arrival_action(seq))
        tick = self.policy.tick_interval_s
        if tick is not None and self._seqs:
            q.schedule(self._seqs[0].spec.arrival_s + self._tick_phase * tick, self._on_tick)
        last_arrival = max((r.arrival_s for r in requests), default=0.0)
        horizon = last_arrival + drain_s
        report_every = max(1, len(requests) // 200)
        total = len(self._seqs)
        while len(q) and self._finished < total:
            next_t = q.peek_time()
            if next_t is not None and next_t > horizon:
                break
            q.pop_and_run()
            if self._check:
                self.check_invariants()
            if progress is not None and q.processed % (report_every * 8) == 0:
                progress(min(1.0, self._finished / total))
        if progress is not None:
            progress(1.0)
        self.check_invariants()
        return self._outcome(time.perf_counter() - wall0)

    # ---- event handlers -----------------------------------------------------------------------
    def _arrival_action(self, seq: Seq) -> Callable[[float], None]:
        return lambda t: self._on_arrival(seq, t)

    def _on_arrival(self, seq: Seq, now: float) -> None:
        self._arrived += 1
        target = self.policy.route(seq.spec, self, now)
        if not 0 <= target < len(self.instances):
            raise InvariantError(f"policy routed request {seq.request_id} to instance {target}")
        self.instances[target].admit(seq)
        if self._observer is not None:
            self._observer.admitted(seq, target, now)
        self._kick(target, now)

    def _on_tick(self, now: float) -> None:
        self.policy.on_tick(self, now)
        tick = self.policy.tick_interval_s
        if tick is not None and self._finished < len(self._seqs):
            self._queue.schedule(now + tick, self._on_tick)

    def _on_step_end(self, i: int, version: int, now: float) -> None:
        if version != self._versions[i]:
            return  # superseded by a truncation
        inst = self.instances[i]
        result = inst.complete(now)
        self._finished += len(result.finished)
        for seq in result.finished:
            self._migrating.discard(seq.request_id)
        self._boundary_ops(i, now)
        self._start(i, now)

    def _kick(self, i: int, now: float) -> None:
        """Make instance i consider new work at its next step boundary."""
        inst = self.instances[i]
        if inst.plan_in_flight is None:
            self._boundary_ops(i, now)
            self._start(i, now)
            return
        old_end = inst.plan_in_flight.end_s
        new_end = inst.truncate(now)
        if new_end is not None and new_end != old_end:
            self._versions[i] += 1
            v = self._versions[i]
            self._queue.schedule(new_end, lambda t: self._on_step_end(i, v, t))

    def _start(self, i: int, now: float) -> None:
        plan = self.instances[i].plan(now, self._max_plan_steps)
        if plan is None:
            return
        self._versions[i] += 1
        v = self._versions[i]
        self._queue.schedule(plan.end_s, lambda t: self._on_step_end(i, v, t))

    # ---- migrations ---------------------------------------------------------------------------
    def _request_detach(self, mig: _Migration, now: float) -> None:
        self._pending_detach[mig.src].append(mig)
        self._kick(mig.src, now)

    def _boundary_ops(self, i: int, now: float) -> None:
        inst = self.instances[i]
        if self._pending_attach[i]:
            attaches, self._pending_attach[i] = self._pending_attach[i], []
            for mig in attaches:
                inst.attach_decoding(mig.seq, mig.reserved_blocks)
                self._count_migration(mig)
        if self._pending_detach[i]:
            detaches, self._pending_detach[i] = self._pending_detach[i], []
            for mig in detaches:
                self._detach(mig, now)

    def _detach(self, mig: _Migration, now: float) -> None:
        seq = mig.seq
        src = self.instances[mig.src]
        dst = self.instances[mig.dst]
        kv = mig.reserved_blocks > 0
        if seq.state is SeqState.FINISHED or (kv and seq.state is not SeqState.DECODE):
            self._abort(mig, now)
            return
        if kv:
            length = src.length_of(seq)
            needed = self._blocks(length - 1)
            if needed > mig.reserved_blocks:
                extra = needed - mig.reserved_blocks
                # Grow the reservation for what was decoded during the copy, or give up.
                if not dst.reserve(extra, slot=False):
                    self._abort(mig, now)
                    return
                mig.reserved_blocks = needed
            delta = max(0, length - mig.start_length_tokens)
            delay = self.migration.downtime_base_s + delta * self._kv_bytes_per_token / (
                self._bandwidth()
            )
        else:
            delay = self.migration.replay_overhead_s
        src.detach(seq)  # at src's step boundary: its caller plans the next step
        self._in_transit[seq.request_id] = mig
        self._queue.schedule(now + delay, lambda t: self._arrive(mig, t))

    def _arrive(self, mig: _Migration, now: float) -> None:
        if mig.reserved_blocks == 0 and self._load_from_store(mig, now):
            return
        del self._in_transit[mig.seq.request_id]
        self._migrating.discard(mig.seq.request_id)
        if mig.reserved_blocks > 0:
            self._pending_attach[mig.dst].append(mig)
        else:
            self.instances[mig.dst].admit(mig.seq)
            self._count_migration(mig)
        self._kick(mig.dst, now)

    def _load_from_store(self, mig: _Migration, now: float) -> bool:
        """Replay with a shared KV store: reserve the context at the destination and load it
        (then attach as a KV transfer would). False: plain replay (no store, not decoding when
        it left, or no room)."""
        store = self.migration.kv_store_bandwidth_bytes_per_s
        seq = mig.seq
        if store is None or seq.generated_tokens == 0:
            return False
        length = seq.spec.input_tokens + seq.generated_tokens
        blocks = self._blocks(length)
        if not self.instances[mig.dst].reserve(blocks):
            return False
        mig.reserved_blocks = blocks
        load_s = length * self._kv_bytes_per_token / store
        self._queue.schedule(now + load_s, lambda t: self._arrive(mig, t))
        return True

    def _abort(self, mig: _Migration, now: float) -> None:
        self._migrating.discard(mig.seq.request_id)
        self._failed_migrations += 1
        if mig.reserved_blocks > 0:
            self.instances[mig.dst].release(mig.reserved_blocks)
            self._kick(mig.dst, now)  # freed room may unblock its queue

    def _count_migration(self, mig: _Migration) -> None:
        mig.seq.migrations += 1
        self._migrations_by_reason[mig.reason] = self._migrations_by_reason.get(mig.reason, 0) + 1

    def _bandwidth(self) -> float:
        return self.migration.bandwidth_bytes_per_s

    def _blocks(self, tokens: int) -> int:
        bs = self.profile.block_size_tokens
        return -(-tokens // bs)

    # ---- invariants and results ---------------------------------------------------------------
    def check_invariants(self) -> None:
        """No request lost or duplicated; no instance over its KV blocks."""
        seen: dict[int, str] = {}

        def place(seq: Seq, where: str) -> None:
            if seq.request_id in seen:
                raise InvariantError(
                    f"request {seq.request_id} is both {seen[seq.request_id]} and {where}"
                )
            seen[seq.request_id] = where

        for inst in self.instances:
            if inst.free_blocks() < 0:
                raise InvariantError(f"instance {inst.instance_id} holds more KV than it has")
            inst.check_counters()
            for seq in inst.waiting():
                place(seq, f"waiting at {inst.instance_id}")
            for seq in inst.running():
                place(seq, f"running at {inst.instance_id}")
        for pending in self._pending_attach:
            for mig in pending:
                place(mig.seq, f"attaching at {mig.dst}")
        for rid, mig in self._in_transit.items():
            place(mig.seq, f"in transit to {mig.dst}")
            if rid != mig.seq.request_id:
                raise InvariantError("transit table corrupted")
        finished = 0
        for seq in self._seqs:
            if seq.state is SeqState.FINISHED:
                place(seq, "finished")
                finished += 1
                if seq.generated_tokens != seq.spec.output_tokens:
                    raise InvariantError(
                        f"request {seq.request_id} finished with {seq.generated_tokens} of "
                        f"{seq.spec.output_tokens} tokens"
                    )
        if finished != self._finished:
            raise InvariantError(f"finished count {self._finished} != {finished}")
        if len(seen) != self._arrived:
            raise InvariantError(f"{self._arrived} requests arrived but {len(seen)} are accounted")

    def _outcome(self, wall_s: float) -> SimOutcome:
        records = []
        for seq in self._seqs:
            generated = seq.generated_tokens
            if seq.state is SeqState.DECODE:
                generated = self.instances[seq.instances[-1]].generated_of(seq)
            records.append(
                RequestRecord(
                    request_id=seq.request_id,
                    arrival_s=seq.spec.arrival_s,
                    input_tokens=seq.spec.input_tokens,
                    output_tokens=seq.spec.output_tokens,
                    generated_tokens=generated,
                    first_token_s=seq.first_token_s,
                    finish_s=seq.finish_s,
                    instances=tuple(seq.instances),
                    migrations=seq.migrations,
                    preemptions=seq.preemptions,
                )
            )
        return SimOutcome(
            records=tuple(records),
            itl=self.itl,
            output_tokens_by_instance=tuple(i.output_tokens for i in self.instances),
            busy_s_by_instance=tuple(i.busy_s for i in self.instances),
            migrations_by_reason=dict(sorted(self._migrations_by_reason.items())),
            failed_migrations=self._failed_migrations,
            preemptions=sum(i.num_preemptions for i in self.instances),
            events=self._queue.processed,
            engine_steps=sum(i.steps_run for i in self.instances),
            sim_end_s=self._queue.now_s,
            wall_s=wall_s,
            groups=tuple(tuple(g) for g in self.policy.groups()),
        )
