"""One engine instance with vLLM v1 scheduling semantics, clock injected.

What it models (L4.md section 8): continuous batching with FCFS waiting and running queues, a
per-step token budget (`max_num_batched_tokens`) with chunked prefill, `max_num_seqs`, a paged
KV cache of fixed-size blocks, and preemption by recompute of the latest-admitted running request
when blocks run out (no new admissions in a step that preempted, as in vLLM).

One simplification, written down: decodes are scheduled before prefill chunks. vLLM walks its
running list in admission order, which gives the same batches because a request whose prefill is
unfinished is always the last one admitted; only a KV-migrated request appended after it could be
ordered differently.

How it is driven (by the simulator's event loop or the emulated engine's real-time loop):

    plan = inst.plan(now)          # decide the next step(s); None when idle
    ... time passes until plan.end_s ...
    result = inst.complete(plan.end_s)

A plan may cover many identical decode-only steps, in closed form: step j of the plan lasts
`first_step_s + j * slope_s` (the cost model is affine in the step index for a fixed batch). The
plan always stops at the next finish, at the last step before the KV cache would run out, and at
`max_steps`. Anything that must act between steps (an arrival, a migration) calls
`truncate(now)`, which commits the steps already finished and keeps only the one in flight.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from l4.costmodel.step import PrefillChunk, StepCostModel
from l4.errors import InvariantError
from l4.instance.config import InstanceConfig
from l4.instance.decode_set import DecodeSet
from l4.instance.sequence import SeqState, Sequence

UNLIMITED_STEPS = 1 << 62


class TokenTimingSink(Protocol):
    """Where inter-token gaps go (l4.metrics.ItlRecorder implements it)."""

    def add_run(self, first_s: float, slope_s: float, steps: int, weight: int) -> None: ...

    def add_gap(self, value_s: float) -> None: ...


class _NullSink:
    def add_run(self, first_s: float, slope_s: float, steps: int, weight: int) -> None:
        pass

    def add_gap(self, value_s: float) -> None:
        pass


@dataclass(frozen=True, slots=True, kw_only=True)
class StepPlan:
    """Steps in flight: `num_steps` steps from `start_s`, step j lasting first + j * slope."""

    start_s: float
    first_step_s: float
    slope_s: float
    num_steps: int
    num_decodes: int
    chunks: tuple[tuple[Sequence, int], ...] = ()

    def end_of_step_s(self, j: int) -> float:
        """End time of step j (0-based)."""
        return self.start_s + (j + 1) * self.first_step_s + self.slope_s * j * (j + 1) / 2

    @property
    def end_s(self) -> float:
        return self.end_of_step_s(self.num_steps - 1)

    def steps_done_by(self, now_s: float) -> int:
        """How many whole steps have finished by `now_s` (0..num_steps)."""
        if self.num_steps == 0 or self.end_of_step_s(0) > now_s:
            return 0  # the common case: observed again before the next step ends
        lo, hi = 0, self.num_steps
        while lo < hi:  # largest m with end_of_step_s(m - 1) <= now
            mid = (lo + hi + 1) // 2
            if self.end_of_step_s(mid - 1) <= now_s:
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    end_s: float
    first_tokens: tuple[Sequence, ...]
    finished: tuple[Sequence, ...]


class Instance:
    """A vLLM-v1-like engine instance. Not thread-safe; all times are injected."""

    def __init__(
        self,
        instance_id: int,
        config: InstanceConfig,
        cost: StepCostModel,
        sink: TokenTimingSink | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.config = config
        self.cost = cost
        self._sink: TokenTimingSink = sink or _NullSink()
        self._bs = config.block_size_tokens
        self._step = 0
        self._last_step_end_s = 0.0
        self._waiting: deque[Sequence] = deque()
        # Sums over the waiting queue (blocks, tokens, tokens^2 / 2), kept as it changes: policies
        # read them at every arrival and tick, and queues grow long past saturation.
        self._wait_blocks = 0
        self._wait_tokens = 0
        self._wait_pairs = 0.0
        self._running: dict[int, Sequence] = {}  # admission order
        self._prefilling: list[Sequence] = []
        self._decode = DecodeSet(self._bs)
        self._explicit_blocks = 0  # held by prefilling sequences
        self._reserved_blocks = 0
        self._reserved_slots = 0
        self._plan: StepPlan | None = None
        self._gap_pending: list[Sequence] = []
        self._order = 0
        self.output_tokens = 0
        # KV tokens freed by completions: how fast room appears, for earliest-acceptance bids.
        self.released_tokens = 0
        self.num_preemptions = 0
        self.busy_s = 0.0

    # ---- observation ------------------------------------------------------------------------
    @property
    def plan_in_flight(self) -> StepPlan | None:
        return self._plan

    @property
    def steps_run(self) -> int:
        """Engine steps completed so far (each one a forward pass on a real GPU)."""
        return self._step

    @property
    def available(self) -> bool:
        return True  # a simulated instance never fails

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def used_blocks(self) -> int:
        return self._explicit_blocks + self._reserved_blocks + self._decode.blocks_at(self._step)

    def free_blocks(self) -> int:
        return self.config.num_kv_blocks - self.used_blocks()

    @property
    def kv_usage(self) -> float:
        return self.used_blocks() / self.config.num_kv_blocks

    def length_of(self, seq: Sequence) -> int:
        """Current context length: prompt + tokens generated so far."""
        if seq.state is SeqState.DECODE:
            return seq.decode_off + self._step + 1
        return seq.spec.input_tokens + seq.generated_tokens

    def generated_of(self, seq: Sequence) -> int:
        if seq.state is SeqState.DECODE:
            return seq.base_generated + self._step - seq.base_step
        return seq.generated_tokens

    def running(self) -> list[Sequence]:
        return list(self._running.values())

    def waiting(self) -> list[Sequence]:
        return list(self._waiting)

    def waiting_demand_blocks(self) -> int:
        """Blocks the prompts sent here still claim: the waiting queue's, and those the prefills
        under way have yet to allocate (Llumnix counts queued demand).

        A prefill allocates its blocks chunk by chunk, so the blocks of its later chunks look
        free while it runs; a router that took them for free would send a second long prompt
        into them, and the two would preempt each other chunk after chunk. The gateway, which
        cannot see a prefill's progress, holds a started prompt's blocks as used instead: the
        free blocks less this demand come to the same total both ways."""
        owed = sum(
            self._blocks_for(seq.prefill_target_tokens) - seq.blocks
            for seq in self._prefilling
            if seq.state is SeqState.PREFILL
        )
        return self._wait_blocks + owed

    def pending_prefill(self) -> tuple[int, float]:
        """(tokens, attention pairs) still to prefill: queued prompts and unfinished chunks.

        Pairs are sum of ``r * (p + r / 2)`` for ``r`` tokens left after ``p`` computed: what
        causal prefill attention scales with. A gateway knows the same from prompt lengths and
        the tokens streamed so far.
        """
        tokens = self._wait_tokens
        pairs = self._wait_pairs
        for seq in self._prefilling:
            r = seq.prefill_target_tokens - seq.computed_tokens
            tokens += r
            pairs += r * (seq.computed_tokens + r / 2)
        return tokens, pairs

    def decode_length_stats(self) -> tuple[int, int, int]:
        """(decodes, context sum, context max) of the next step, for load estimates."""
        d = self._decode
        return len(d), d.length_sum(self._step), d.length_max(self._step)

    # ---- inputs -----------------------------------------------------------------------------
    def admit(self, seq: Sequence) -> None:
        """Queue `seq` (new, or resumed by token replay). Safe at any time; see `truncate`."""
        seq.state = SeqState.WAITING
        seq.computed_tokens = 0
        seq.blocks = 0
        seq.prefill_target_tokens = seq.spec.input_tokens + seq.generated_tokens
        seq.order = self._next_order()
        seq.instances.append(self.instance_id)
        self._waiting.append(seq)
        self._count_waiting(seq, 1)

    def reserve(self, blocks: int, *, slot: bool = True) -> bool:
        """Hold `blocks` (and a sequence slot) for an incoming KV migration; False if no room."""
        planned = self._plan.num_steps if self._plan else 0
        # Count what the steps in flight will still allocate, so a reservation never races them.
        used = (
            self._explicit_blocks
            + self._reserved_blocks
            + self._decode.blocks_at(self._step + planned)
        )
        if used + blocks > self.config.num_kv_blocks:
            return False
        if slot and len(self._running) + self._reserved_slots >= self.config.max_num_seqs:
            return False
        self._reserved_blocks += blocks
        self._reserved_slots += int(slot)
        return True

    def release(self, blocks: int, *, slot: bool = True) -> None:
        if blocks > self._reserved_blocks or self._reserved_slots < int(slot):
            raise InvariantError(f"instance {self.instance_id}: releasing more than reserved")
        self._reserved_blocks -= blocks
        self._reserved_slots -= int(slot)

    def attach_decoding(self, seq: Sequence, reserved_blocks: int) -> None:
        """Take in a sequence whose KV was copied here; it resumes decoding at the next step.

        Call between steps. The reservation made by `reserve(reserved_blocks)` becomes its KV.
        """
        self._require_boundary("attach")
        self.release(reserved_blocks)
        seq.computed_tokens = seq.spec.input_tokens + seq.generated_tokens - 1
        seq.order = self._next_order()
        seq.instances.append(self.instance_id)
        self._running[seq.request_id] = seq
        self._decode.add(seq, self._step)
        self._gap_pending.append(seq)
        if self.free_blocks() < 0:
            raise InvariantError(f"instance {self.instance_id}: KV over-allocated by attach")

    def detach(self, seq: Sequence) -> None:
        """Hand `seq` out (migration). Call between steps; its counters are materialised."""
        self._require_boundary("detach")
        if seq.state is SeqState.WAITING:
            self._waiting.remove(seq)
            self._count_waiting(seq, -1)
        else:
            self._drop_running(seq)
        seq.state = SeqState.DETACHED
        seq.computed_tokens = 0
        seq.blocks = 0
        seq.resume_gap = seq.generated_tokens > 0

    # ---- stepping ---------------------------------------------------------------------------
    def plan(self, now_s: float, max_steps: int = UNLIMITED_STEPS) -> StepPlan | None:
        """Schedule the next step(s) starting at `now_s`; None when there is nothing to run."""
        self._require_boundary("plan")
        step = self._step
        dec = self._decode
        preempted = False
        # 1. Decodes: one token each; preempt the latest-admitted until their blocks fit.
        while len(dec) and dec.new_blocks_for_step(step) > self.free_blocks():
            self._preempt(next(reversed(self._running.values())))
            preempted = True
        free = self.free_blocks() - (dec.new_blocks_for_step(step) if len(dec) else 0)
        budget = self.config.max_num_batched_tokens - len(dec)
        chunks: list[tuple[Sequence, int]] = []
        # 2. Unfinished prefills, in admission order.
        for seq in list(self._prefilling):
            if budget <= 0:
                break
            if seq.state is not SeqState.PREFILL:  # preempted as a victim in this loop
                continue
            c = min(seq.prefill_target_tokens - seq.computed_tokens, budget)
            extra = self._blocks_for(seq.computed_tokens + c) - seq.blocks
            while extra > free and seq.state is SeqState.PREFILL:
                victim = next(reversed(self._running.values()))
                freed_need = 1 if victim in dec and self._needs_block(victim) else 0
                free += self._preempt(victim) + freed_need
                preempted = True
            if seq.state is not SeqState.PREFILL:
                continue
            free -= extra
            seq.blocks += extra
            self._explicit_blocks += extra
            budget -= c
            chunks.append((seq, c))
        # 3. Admissions, FCFS, unless this step preempted (vLLM does the same).
        if not preempted:
            while self._waiting and budget > 0 and len(self._running) < self._seq_limit():
                seq = self._waiting[0]
                c = min(seq.prefill_target_tokens, budget)
                blocks = self._blocks_for(c)
                if blocks > free:
                    break  # head-of-line: FCFS never skips the head
                self._waiting.popleft()
                self._count_waiting(seq, -1)
                free -= blocks
                seq.blocks = blocks
                self._explicit_blocks += blocks
                seq.state = SeqState.PREFILL
                self._running[seq.request_id] = seq
                self._prefilling.append(seq)
                budget -= c
                chunks.append((seq, c))
        if free < 0:
            raise InvariantError(f"instance {self.instance_id}: KV over-allocated ({free})")
        n = len(dec)
        if n == 0 and not chunks:
            return None
        first = self._step_time(step, n, chunks)
        num_steps, slope = 1, 0.0
        if not chunks and not preempted:
            num_steps = self._closed_form_steps(step, max_steps)
            if num_steps > 1:
                slope = self._step_time(step + 1, n, chunks) - first
        self._plan = StepPlan(
            start_s=now_s,
            first_step_s=first,
            slope_s=slope,
            num_steps=num_steps,
            num_decodes=n,
            chunks=tuple(chunks),
        )
        return self._plan

    def advance(self, now_s: float) -> None:
        """Commit the steps of the plan in flight that have finished by `now_s`."""
        plan = self._plan
        if plan is None or plan.num_steps == 1:
            return
        done = min(plan.steps_done_by(now_s), plan.num_steps - 1)
        if done == 0:
            return
        self._commit_decode_steps(plan, done)
        self._plan = StepPlan(
            start_s=plan.end_of_step_s(done - 1),
            first_step_s=plan.first_step_s + plan.slope_s * done,
            slope_s=plan.slope_s,
            num_steps=plan.num_steps - done,
            num_decodes=plan.num_decodes,
        )

    def truncate(self, now_s: float) -> float | None:
        """Stop the plan after the step in flight at `now_s`; return its new end (None if idle)."""
        self.advance(now_s)
        plan = self._plan
        if plan is None:
            return None
        if plan.num_steps > 1:
            self._plan = StepPlan(
                start_s=plan.start_s,
                first_step_s=plan.first_step_s,
                slope_s=plan.slope_s,
                num_steps=1,
                num_decodes=plan.num_decodes,
                chunks=plan.chunks,
            )
        return self._plan.end_s if self._plan else None

    def complete(self, now_s: float) -> StepResult:
        """Finish the plan in flight (at its end time) and emit its tokens."""
        plan = self._plan
        if plan is None:
            raise InvariantError(f"instance {self.instance_id}: complete() with no step in flight")
        end = plan.end_s
        self._commit_decode_steps(plan, plan.num_steps)
        self._plan = None
        first_tokens: list[Sequence] = []
        finished: list[Sequence] = []
        for seq, c in plan.chunks:
            if seq.state is not SeqState.PREFILL:
                continue
            seq.computed_tokens += c
            if seq.computed_tokens < seq.prefill_target_tokens:
                continue
            self._emit_prefill_token(seq, end, first_tokens)
            self._prefilling.remove(seq)
            self._explicit_blocks -= seq.blocks
            if seq.generated_tokens >= seq.spec.output_tokens:
                seq.blocks = 0
                self._finish(seq, end, finished)
            else:
                self._decode.add(seq, self._step)
        for seq in self._decode.pop_finished(self._step):
            self._finish(seq, end, finished)
        return StepResult(end_s=end, first_tokens=tuple(first_tokens), finished=tuple(finished))

    def check_counters(self) -> None:
        """The waiting-queue sums equal a recount (the simulator's invariant check calls it)."""
        q = list(self._waiting)
        blocks = sum(-(-s.prefill_target_tokens // self._bs) for s in q)
        tokens = sum(s.prefill_target_tokens for s in q)
        pairs = sum(s.prefill_target_tokens**2 / 2 for s in q)
        if (blocks, tokens) != (self._wait_blocks, self._wait_tokens) or abs(
            pairs - self._wait_pairs
        ) > 1e-6 * (1.0 + pairs):
            raise InvariantError(f"instance {self.instance_id}: waiting-queue sums drifted")

    # ---- internals --------------------------------------------------------------------------
    def _count_waiting(self, seq: Sequence, sign: int) -> None:
        r = seq.prefill_target_tokens
        self._wait_blocks += sign * -(-r // self._bs)
        self._wait_tokens += sign * r
        self._wait_pairs += sign * r * r / 2

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    def _seq_limit(self) -> int:
        return self.config.max_num_seqs - self._reserved_slots

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self._bs)

    def _needs_block(self, seq: Sequence) -> bool:
        return (seq.decode_off + self._step) % self._bs == 0

    def _require_boundary(self, what: str) -> None:
        if self._plan is not None:
            raise InvariantError(f"instance {self.instance_id}: {what} while a step is in flight")

    def _step_time(self, step: int, n: int, chunks: list[tuple[Sequence, int]]) -> float:
        dec = self._decode
        return self.cost.step_time_s(
            num_decodes=n,
            context_sum_tokens=dec.length_sum(step) if n else 0,
            context_max_tokens=dec.length_max(step) if n else 0,
            chunks=tuple(PrefillChunk(tokens=c, prior_tokens=s.computed_tokens) for s, c in chunks),
        )

    def _closed_form_steps(self, step: int, max_steps: int) -> int:
        dec = self._decode
        next_finish = dec.next_finish_step()
        assert next_finish is not None
        k = min(max_steps, next_finish - step, dec.max_steps_within(step, self.free_blocks()))
        return max(k, 1)

    def _commit_decode_steps(self, plan: StepPlan, steps: int) -> None:
        n = plan.num_decodes
        end = plan.end_of_step_s(steps - 1)
        self.busy_s += end - plan.start_s
        if n:
            sink = self._sink
            pending = [s for s in self._gap_pending if s in self._decode]
            self._gap_pending.clear()
            if pending:
                first_end = plan.end_of_step_s(0)
                for seq in pending:
                    assert seq.last_token_s is not None
                    sink.add_gap(first_end - seq.last_token_s)
                if n > len(pending):
                    sink.add_run(plan.first_step_s, 0.0, 1, n - len(pending))
                if steps > 1:
                    sink.add_run(plan.first_step_s + plan.slope_s, plan.slope_s, steps - 1, n)
            else:
                sink.add_run(plan.first_step_s, plan.slope_s, steps, n)
            self.output_tokens += n * steps
        self._step += steps
        self._last_step_end_s = end

    def _emit_prefill_token(self, seq: Sequence, end: float, first_tokens: list[Sequence]) -> None:
        seq.generated_tokens += 1
        self.output_tokens += 1
        if seq.first_token_s is None:
            seq.first_token_s = end
            first_tokens.append(seq)
        elif seq.resume_gap and seq.last_token_s is not None:
            self._sink.add_gap(end - seq.last_token_s)
        seq.resume_gap = False
        seq.last_token_s = end

    def _finish(self, seq: Sequence, end: float, finished: list[Sequence]) -> None:
        del self._running[seq.request_id]
        self.released_tokens += seq.spec.input_tokens + seq.generated_tokens
        seq.state = SeqState.FINISHED
        seq.finish_s = end
        seq.last_token_s = end
        finished.append(seq)

    def _drop_running(self, seq: Sequence) -> int:
        """Remove a running sequence and free its KV; returns the blocks freed."""
        if seq.state is SeqState.DECODE:
            self._decode.remove(seq, self._step)
            seq.last_token_s = self._last_step_end_s
        else:
            self._prefilling.remove(seq)
            self._explicit_blocks -= seq.blocks
        del self._running[seq.request_id]
        freed = seq.blocks
        seq.blocks = 0
        return freed

    def _preempt(self, seq: Sequence) -> int:
        freed = self._drop_running(seq)
        seq.state = SeqState.WAITING
        seq.computed_tokens = 0
        seq.prefill_target_tokens = seq.spec.input_tokens + seq.generated_tokens
        seq.resume_gap = seq.generated_tokens > 0
        seq.preemptions += 1
        self.num_preemptions += 1
        self._waiting.appendleft(seq)
        self._count_waiting(seq, 1)
        return freed
