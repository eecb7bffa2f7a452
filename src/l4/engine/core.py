"""The real-time step loop of one emulated instance: the real scheduler, a sleeping GPU.

Guarantees:

* The scheduler is `l4.instance.Instance` (the simulator's), planned one step at a time; each step
  lasts exactly the cost model's predicted time, divided by the time scale, in wall time.
* Step deadlines are absolute: a step that starts right after the previous one starts at its
  predicted end, not when the loop woke up, so sleep overshoot does not accumulate (unless the
  loop falls more than `resync_lag_s` behind, e.g. on an overloaded CPU; then it restarts from
  now, as a GPU that finished late would).
* A request submitted at any time is admitted at once and scheduled at the next step boundary;
  an abort removes the sequence (and frees its KV) at the next step boundary. Nothing leaks: a
  handle leaves the loop when it finishes or is aborted.
* Time inside the loop is emulated time: (clock() - start) * time_scale. The clock and the sleep
  are injected, so tests can run the loop against a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from l4.engine.metrics import EngineMetrics
from l4.errors import InvariantError, ValidationError
from l4.instance import Instance, SeqState, Sequence
from l4.request import RequestSpec

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Handle:
    """One request as the HTTP side sees it: a count of tokens produced so far, and an event."""

    __slots__ = (
        "_event",
        "aborted",
        "arrival_s",
        "finished",
        "last_token_s",
        "produced",
        "seq",
    )

    def __init__(self, seq: Sequence, arrival_s: float) -> None:
        self.seq = seq
        self.arrival_s = arrival_s
        self.produced = 0
        self.finished = False
        self.aborted = False
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
    ) -> None:
        if not time_scale > 0:
            raise ValidationError(f"--time-scale must be > 0, got {time_scale}")
        self.instance = instance
        self.time_scale = time_scale
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        self._resync_s = resync_lag_s * time_scale
        self._start_wall = clock()
        self._wake = asyncio.Event()
        self._handles: dict[int, Handle] = {}
        self._aborts: list[Handle] = []
        self._next_id = 0
        self._stopping = False
        self.num_steps = 0
        self.lateness_s = 0.0  # emulated seconds the loop woke after its deadlines, summed

    # ---- inputs (any time) --------------------------------------------------------------------
    def now_s(self) -> float:
        return (self._clock() - self._start_wall) * self.time_scale

    def submit(self, *, prompt_tokens: int, output_tokens: int) -> Handle:
        """Queue a request; it joins the batch at the next step boundary."""
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
        handle = Handle(Sequence(spec), now)
        self._handles[spec.request_id] = handle
        self.instance.admit(handle.seq)
        self._update_gauges()
        self._wake.set()
        return handle

    def abort(self, handle: Handle) -> None:
        """Stop `handle`; its sequence leaves the instance at the next step boundary."""
        if handle.done:
            return
        handle.aborted = True
        handle.notify()
        self._aborts.append(handle)
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    @property
    def num_tracked(self) -> int:
        """Requests submitted and neither finished nor removed after an abort."""
        return len(self._handles)

    # ---- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        inst = self.instance
        last_end: float | None = None
        try:
            while not self._stopping:
                self._apply_aborts()
                now = self.now_s()
                back_to_back = last_end is not None and now <= last_end + self._resync_s
                start = last_end if back_to_back and last_end is not None else now
                plan = inst.plan(start, 1)
                if plan is None:
                    last_end = None
                    self._update_gauges()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._update_gauges()
                await self._sleep_until(plan.end_s)
                result = inst.complete(plan.end_s)
                last_end = result.end_s
                self.num_steps += 1
                self._deliver(result.end_s, result.finished)
        finally:
            for handle in self._handles.values():
                handle.aborted = True
                handle.notify()

    async def _sleep_until(self, end_s: float) -> None:
        delay = (end_s - self.now_s()) / self.time_scale
        if delay > 0:
            await self._sleep(delay)
        else:
            await self._sleep(0)  # let the HTTP side run even when the loop is late
        self.lateness_s += max(0.0, self.now_s() - end_s)

    def _apply_aborts(self) -> None:
        if not self._aborts:
            return
        aborts, self._aborts = self._aborts, []
        for handle in aborts:
            seq = handle.seq
            if seq.state not in (SeqState.FINISHED, SeqState.DETACHED):
                self.instance.detach(seq)
            self._handles.pop(seq.request_id, None)
        self._update_gauges()

    def _deliver(self, end_s: float, finished: tuple[Sequence, ...]) -> None:
        inst = self.instance
        m = self._metrics
        for handle in self._handles.values():
            seq = handle.seq
            count = inst.generated_of(seq) if seq.state is SeqState.DECODE else seq.generated_tokens
            new = count - handle.produced
            if new <= 0:
                continue
            if m is not None:
                if handle.produced == 0:
                    m.ttft.observe(end_s - handle.arrival_s)
                    m.prompt_tokens.inc(seq.spec.input_tokens)
                else:
                    m.itl.observe(end_s - handle.last_token_s)
                m.generation_tokens.inc(new)
            handle.produced = count
            handle.last_token_s = end_s
            handle.notify()
        for seq in finished:
            gone = self._handles.pop(seq.request_id, None)
            if gone is None:
                raise InvariantError(f"request {seq.request_id} finished but was not tracked")
            gone.finished = True
            gone.notify()
            if m is not None:
                m.e2e.observe(end_s - gone.arrival_s)
        self._update_gauges()

    def _update_gauges(self) -> None:
        m = self._metrics
        if m is None:
            return
        inst = self.instance
        m.running.set(inst.num_running)
        m.waiting.set(inst.num_waiting)
        m.kv_usage.set(inst.kv_usage)
