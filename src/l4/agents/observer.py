"""Live length summaries: what one instance served over a window, as an agent measures it.

Each window the observer turns the requests it saw into the counts of ``l4.core.summary``: arrivals
placed here by prompt bucket, and the contexts each request decoded at here — ``[start, end)``
with ``start`` its length when the window began (or when it arrived here) and ``end`` its length
when the window closed (or when it left or finished). Only lengths are read, as a gateway could
read them from a real engine's token stream. Windows are EMA-smoothed (``l4.core.summary.ema``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l4.core.grid import LengthGrid
from l4.core.summary import WorkloadSummary, ema, summary_from_counts
from l4.instance.sequence import SeqState, Sequence
from l4.views import InstanceView


@dataclass(slots=True)
class _Tracked:
    seq: Sequence
    start_tokens: int
    fresh: bool  # start is the prompt: reaching it is no crossing
    left_tokens: int | None = None  # its length when it was handed to another instance


class WindowObserver:
    def __init__(self, instance_id: int, grid: LengthGrid, smoothing: float) -> None:
        self.instance_id = instance_id
        self.grid = grid
        self.smoothing = smoothing
        self._tracked: dict[int, _Tracked] = {}
        self._prompts: list[int] = []
        self._window_start_s: float | None = None
        self.smoothed: WorkloadSummary | None = None
        self.last_window: WorkloadSummary | None = None  # the raw counts of the latest window
        self.requests_seen = 0

    def note_admitted(self, seq: Sequence, now_s: float) -> None:
        self._open(now_s)
        self._prompts.append(seq.spec.input_tokens)
        self._tracked[seq.request_id] = _Tracked(seq, seq.spec.input_tokens, True)

    def note_incoming(self, seq: Sequence, length_tokens: int, now_s: float) -> None:
        self._open(now_s)
        self._tracked[seq.request_id] = _Tracked(seq, length_tokens, False)

    def note_left(self, seq: Sequence, length_tokens: int) -> None:
        """``seq`` was handed to another instance at ``length_tokens``: what it decodes from there
        on is the destination's (which counts it from ``length_tokens``), even where this instance
        still sees the request, and even once its counters go on growing elsewhere. A request's
        counters follow it across instances (the gateway's book at once, the simulator's when
        materialised), so without this the source counted what the destination decoded before
        its window closed (a cascaded request live: 175 tokens at the source instead of 52)."""
        tracked = self._tracked.get(seq.request_id)
        if tracked is not None:
            tracked.left_tokens = length_tokens

    def open(self, now_s: float) -> None:
        """Start the first window at ``now_s`` unless a request already started it: what was
        noted before stays in it (nothing is closed here)."""
        self._open(now_s)

    def _open(self, now_s: float) -> None:
        if self._window_start_s is None:
            self._window_start_s = now_s

    def close(self, view: InstanceView, now_s: float) -> WorkloadSummary | None:
        """End the window at ``now_s``; returns the smoothed summary (None before any data)."""
        if self._window_start_s is None:
            self._window_start_s = now_s
            return self.smoothed
        duration = now_s - self._window_start_s
        if duration <= 0:
            return self.smoothed
        me = self.instance_id
        for seq in view.running():  # requests that reached us without a note (e.g. preempted)
            if seq.request_id not in self._tracked:
                self._tracked[seq.request_id] = _Tracked(seq, view.length_of(seq), False)
        starts: list[int] = []
        ends: list[int] = []
        fresh: list[bool] = []
        gone: list[int] = []
        for rid, t in self._tracked.items():
            seq = t.seq
            here = (
                seq.instances
                and seq.instances[-1] == me
                and seq.state is not (SeqState.FINISHED)
                and seq.state is not SeqState.DETACHED
            )
            if here:
                end = view.length_of(seq)
            else:  # finished or left: its counters were materialised when it did
                end = seq.spec.input_tokens + seq.generated_tokens
                gone.append(rid)
            if t.left_tokens is not None:
                end = min(end, t.left_tokens)
            if end > t.start_tokens:
                starts.append(t.start_tokens)
                ends.append(end)
                fresh.append(t.fresh)
                t.start_tokens = end
                t.fresh = False
        self.requests_seen = len(self._tracked)
        for rid in gone:
            del self._tracked[rid]
        grid = self.grid
        window = summary_from_counts(
            grid,
            duration_s=duration,
            prompts=np.asarray(self._prompts, np.float64),
            starts=np.asarray(starts, np.float64),
            ends=np.asarray(ends, np.float64),
            starts_at_prompt=np.asarray(fresh, dtype=bool),
        )
        self._prompts = []
        self._window_start_s = now_s
        self.last_window = window
        self.smoothed = (
            window if self.smoothed is None else ema(self.smoothed, window, self.smoothing)
        )
        return self.smoothed
