"""The real-time step loop of one emulated instance: the real scheduler, a sleeping GPU.

Guarantees:

* The scheduler is `l4.instance.Instance` (the simulator's), planned one step at a time; each step
  lasts exactly the cost model's predicted time, divided by the time scale, in wall time.
* Step deadlines are absolute: a step that starts right after the previous one starts at its
  predicted end, not when the loop woke up, so sleep overshoot does not accumulate (unless the
  loop falls more than `resync_lag_s` behind, e.g. on an overloaded CPU; then it restarts from
  now, as a GPU that finished late would).
* A request submitted at any time joins the instance at the first step boundary at or after its
  arrival (in emulated time), as in the simulator: when the loop runs late, a request that
  arrived after the deadline of the step just finished waits for the next boundary rather than
  joining a step that, in emulated time, started before it arrived. An abort removes the
  sequence (and frees its KV) at the next step boundary. Nothing leaks: a handle leaves the
  loop when it finishes or is aborted.
* Time inside the loop is emulated time: (clock() - start) * time_scale. The clock and the sleep
  are injected, so tests can run the loop against a fake clock.
* With `spin_s` > 0 the loop sleeps until `spin_s` before a deadline, then yields to the event
  loop until the deadline passes: asyncio rounds timer waits up to the millisecond, which at a
  high time scale would deliver every token up to 1 ms (wall) late. Spinning yields, so HTTP
  work still runs; it costs CPU only while a step is in flight. Keep it 0 with a fake clock.
* Every step's timing is recorded (`step_log`, the last `step_log_size` steps): its predicted
  wall duration, its measured one (from the loop waking after the previous step, or from the
  plan when the loop was idle or resynchronised, to waking after this one) and its lateness
  (wake minus deadline).
* Metrics (when given): a request's arrival is its submission, it is scheduled at the start of the
  first step that computes any of its prompt, its tokens are seen when the loop hands them over;
  a request finishes with its natural reason ("length" or "stop", given at submission), or with
  the reason given to `abort` ("stop" for a stop string, "abort" for a client that left).
  Preemptions and the tokens of every step are counted as vLLM counts them.
* With `crash_after_tokens`, the loop stops for good once exactly that many tokens were emitted
  in total (a step that crosses the threshold delivers only the tokens up to it): every
  unfinished handle is marked `crashed` and `crashed` is set. Nothing steps afterwards.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from l4.engine.metrics import EngineMetrics, FinishedRequest
from l4.errors import InvariantError, ValidationError
from l4.instance import Instance, SeqState, Sequence
from l4.request import RequestSpec

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepTiming:
    """Wall-clock timing of one engine step (seconds)."""

    predicted_s: float  # the cost model's step time / time scale
    measured_s: float  # from the previous wake (or the plan, after idling) to this wake
    late_s: float  # this wake minus the step's deadline (>= 0 unless the sleep woke early)
    num_seqs: int  # sequences in the step's batch


class Handle:
    """One request as the HTTP side sees it: a count of tokens produced so far, and an event."""

    __slots__ = (
        "_event",
        "aborted",
        "arrival_s",
        "crashed",
        "finish_reason",
        "finished",
        "first_seen_s",
        "last_seen_s",
        "last_token_s",
        "produced",
        "scheduled_s",
        "seq",
    )

    def __init__(self, seq: Sequence, arrival_s: float, finish_reason: str = "length") -> None:
        self.seq = seq
        self.arrival_s = arrival_s
        self.finish_reason = finish_reason  # why it ends if nothing cuts it short
        self.scheduled_s: float | None = None  # start of the first step that computed it
        self.produced = 0
        self.finished = False
        self.aborted = False
        self.crashed = False  # the engine died under it: no finish reason will ever come
        # Emulated times the loop actually delivered its first and latest tokens (late wakes
        # included), as opposed to `last_token_s`, the step end the cost model predicted.
        self.first_seen_s = arrival_s
        self.last_seen_s = arrival_s
        self.last_token_s = arrival_s
        self._event = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.finished or self.aborted

    def notify(self) -> None:
        self._event.set()

    async def wait_beyond(self, have: int) -> int:
        """Wait until more than `have` tokens were produced or the request ended; return count."""
        while self.produced <= have and not self.done:
            self._event.clear()
            await self._event.wait()
        return self.produced


class EngineCore:
    """Drives one Instance in real time. Use `run()` as one task; `stop()` ends it."""

    def __init__(
        self,
        instance: Instance,
        *,
        time_scale: float,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        metrics: EngineMetrics | None = None,
        resync_lag_s: float = 0.05,
        spin_s: float = 0.0,
        crash_after_tokens: int | None = None,
        step_log_size: int = 65536,
    ) -> None:
        if not time_scale > 0:
            raise ValidationError(f"--time-scale must be > 0, got {time_scale}")
        if crash_after_tokens is not None and crash_after_tokens < 1:
            raise ValidationError(f"--crash-after-tokens must be >= 1, got {crash_after_tokens}")
        self.instance = instance
        self.time_scale = time_scale
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        self._resync_s = resync_lag_s * time_scale
        self._start_wall = clock()
        self._wake = asyncio.Event()
        self._handles: dict[int, Handle] = {}
        self._inbox: deque[Handle] = deque()  # submitted, not yet admitted (arrival order)
        self._aborts: list[Handle] = []
        self._next_id = 0
        self._stopping = False
        self._spin_s = spin_s
        self._crash_after = crash_after_tokens
        self._crashed = asyncio.Event()
        self.num_steps = 0
        self.num_resyncs = 0  # steps started from "now" because the loop fell too far behind
        self.tokens_emitted = 0
        self.lateness_s = 0.0  # emulated seconds the loop woke after its deadlines, summed
        self.step_log: deque[StepTiming] = deque(maxlen=step_log_size)

    # ---- inputs (any time) --------------------------------------------------------------------
    def now_s(self) -> float:
        return (self._clock() - self._start_wall) * self.time_scale

    def submit(
        self, *, prompt_tokens: int, output_tokens: int, finish_reason: str = "length"
    ) -> Handle:
        """Queue a request; it joins the batch at the next step boundary.

        `finish_reason`: what ends it after `output_tokens` ("length": max_tokens, "stop": EOS).
        """
        if prompt_tokens < 1 or output_tokens < 1:
            raise ValidationError("a request needs at least one prompt and one output token")
        now = self.now_s()
        spec = RequestSpec(
            request_id=self._next_id,
            arrival_s=now,
            input_tokens=prompt_tokens,
            output_tokens=output_tokens,
        )
        self._next_id += 1
        handle = Handle(Sequence(spec), now, finish_reason)
        self._handles[spec.request_id] = handle
        self._inbox.append(handle)
        self._update_gauges()
        self._wake.set()
        return handle

    def abort(self, handle: Handle, *, finish_reason: str = "abort") -> None:
        """Stop `handle`; its sequence leaves the instance at the next step boundary.

        `finish_reason` "stop" (a stop string ended it) records it as finished, with the tokens it
        was given; "abort" (its client left) as abandoned.
        """
        if handle.done:
            return
        if self._metrics is not None:
            if finish_reason == "abort" or handle.produced == 0:
                self._metrics.request_aborted()
            else:
                self._metrics.request_finished(self._finished(handle, finish_reason))
        handle.aborted = True
        handle.notify()
        self._aborts.append(handle)
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    @property
    def crashed(self) -> bool:
        return self._crashed.is_set()

    async def wait_crashed(self) -> None:
        await self._crashed.wait()

    @property
    def num_tracked(self) -> int:
        """Requests submitted and neither finished nor removed after an abort."""
        return len(self._handles)

    # ---- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        inst = self.instance
        last_end: float | None = None
        woke_wall = 0.0
        try:
            while not self._stopping:
                self._apply_aborts()
                now_wall = self._clock()
                now = (now_wall - self._start_wall) * self.time_scale
                back_to_back = last_end is not None and now <= last_end + self._resync_s
                if last_end is not None and not back_to_back:
                    self.num_resyncs += 1
                start = last_end if back_to_back and last_end is not None else now
                self._admit_arrived(start)
                preemptions = inst.num_preemptions
                plan = inst.plan(start, 1)
                if plan is None and self._inbox:
                    # Only requests that arrived after `start` are left: the GPU would have
                    # idled until them, so the next step starts now.
                    back_to_back, start = False, now
                    self._admit_arrived(start)
                    plan = inst.plan(start, 1)
                if self._metrics is not None and inst.num_preemptions > preemptions:
                    self._metrics.preemptions.inc(inst.num_preemptions - preemptions)
                if plan is None:
                    last_end = None
                    self._update_gauges()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if not back_to_back:
                    woke_wall = now_wall
                self._mark_scheduled(plan.chunks, start)
                self._update_gauges()
                late_s = await self._sleep_until(plan.end_s)
                wall = self._clock()
                self.step_log.append(
                    StepTiming(
                        predicted_s=(plan.end_s - start) / self.time_scale,
                        measured_s=wall - woke_wall,
                        late_s=late_s,
                        num_seqs=plan.num_decodes + len(plan.chunks),
                    )
                )
                if self._metrics is not None:
                    self._metrics.step_lateness.observe(max(0.0, late_s))
                woke_wall = wall
                result = inst.complete(plan.end_s)
                last_end = result.end_s
                self.num_steps += 1
                self._deliver(result.end_s, result.finished)
        finally:
            for handle in self._handles.values():
                handle.aborted = True
                handle.notify()

    async def _sleep_until(self, end_s: float) -> float:
        """Sleep until emulated time `end_s`; return how late (wall seconds) the loop woke."""
        delay = (end_s - self.now_s()) / self.time_scale
        if delay > self._spin_s:
            await self._sleep(delay - self._spin_s)
        else:
            await self._sleep(0)  # let the HTTP side run even when the loop is late
        if self._spin_s > 0:
            while self.now_s() < end_s:
                await asyncio.sleep(0)
        late = self.now_s() - end_s
        self.lateness_s += max(0.0, late)
        return late / self.time_scale

    def _mark_scheduled(self, chunks: tuple[tuple[Sequence, int], ...], start_s: float) -> None:
        for seq, _ in chunks:
            handle = self._handles.get(seq.request_id)
            if handle is not None and handle.scheduled_s is None:
                handle.scheduled_s = start_s

    def _finished(self, handle: Handle, finish_reason: str) -> FinishedRequest:
        arrival = handle.arrival_s
        return FinishedRequest(
            finish_reason=finish_reason,
            arrival_s=arrival,
            scheduled_s=arrival if handle.scheduled_s is None else handle.scheduled_s,
            first_token_s=handle.first_seen_s,
            last_token_s=handle.last_seen_s,
            prompt_tokens=handle.seq.spec.input_tokens,
            generation_tokens=handle.produced,
        )

    def _admit_arrived(self, start_s: float) -> None:
        inbox = self._inbox
        while inbox and inbox[0].arrival_s <= start_s:
            self.instance.admit(inbox.popleft().seq)

    def _apply_aborts(self) -> None:
        if not self._aborts:
            return
        aborts, self._aborts = self._aborts, []
        for handle in aborts:
            seq = handle.seq
            if handle in self._inbox:
                self._inbox.remove(handle)  # never admitted: nothing to free
            elif seq.state not in (SeqState.FINISHED, SeqState.DETACHED):
                self.instance.detach(seq)
            self._handles.pop(seq.request_id, None)
        self._update_gauges()

    def _deliver(self, end_s: float, finished: tuple[Sequence, ...]) -> None:
        inst = self.instance
        m = self._metrics
        limit = self._crash_after
        # Latency metrics are measured: the time the loop actually hands the tokens over.
        seen_s = self.now_s()
        step_tokens = 0  # vLLM's iteration tokens: new tokens, plus whole prompts just prefilled
        for handle in self._handles.values():
            seq = handle.seq
            count = inst.generated_of(seq) if seq.state is SeqState.DECODE else seq.generated_tokens
            new = count - handle.produced
            if new <= 0:
                continue
            if limit is not None:
                new = min(new, limit - self.tokens_emitted)
                if new <= 0:
                    break
            if handle.produced == 0:
                handle.first_seen_s = seen_s
                step_tokens += seq.spec.input_tokens
                if m is not None:
                    m.ttft.observe(seen_s - handle.arrival_s)
                    m.prompt_tokens.inc(seq.spec.input_tokens)
            elif m is not None:
                m.itl.observe(seen_s - handle.last_seen_s)
            if m is not None:
                m.generation_tokens.inc(new)
            step_tokens += new
            handle.produced += new
            self.tokens_emitted += new
            handle.last_token_s = end_s
            handle.last_seen_s = seen_s
            handle.notify()
        if m is not None:
            m.iteration_tokens.observe(step_tokens)
        for seq in finished:
            gone = self._handles.get(seq.request_id)
            if gone is None:
                raise InvariantError(f"request {seq.request_id} finished but was not tracked")
            if gone.produced < seq.generated_tokens:
                continue  # the crash threshold cut its last tokens: it never finishes
            del self._handles[seq.request_id]
            gone.finished = True
            gone.notify()
            if m is not None:
                m.request_finished(self._finished(gone, gone.finish_reason))
        if limit is not None and self.tokens_emitted >= limit:
            self._crash()
        self._update_gauges()

    def _crash(self) -> None:
        self._stopping = True
        for handle in self._handles.values():
            handle.crashed = True
            handle.aborted = True
            handle.notify()
        self._crashed.set()

    def _update_gauges(self) -> None:
        m = self._metrics
        if m is None:
            return
        inst = self.instance
        m.running.set(inst.num_running)
        m.waiting.set(inst.num_waiting + len(self._inbox))
        m.kv_usage.set(inst.kv_usage)
