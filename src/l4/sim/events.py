"""A deterministic event queue: events at equal times fire in the order they were scheduled."""

from __future__ import annotations

import heapq
from collections.abc import Callable

Action = Callable[[float], None]


class EventQueue:
    __slots__ = ("_heap", "_seq", "now_s", "processed")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Action]] = []
        self._seq = 0
        self.now_s = 0.0
        self.processed = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, time_s: float, action: Action) -> None:
        if time_s < self.now_s:
            time_s = self.now_s  # never schedule into the past (float rounding)
        self._seq += 1
        heapq.heappush(self._heap, (time_s, self._seq, action))

    def peek_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_and_run(self) -> None:
        time_s, _, action = heapq.heappop(self._heap)
        self.now_s = time_s
        self.processed += 1
        action(time_s)
