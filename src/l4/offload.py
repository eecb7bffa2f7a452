"""Where slow, pure work runs: in the caller's thread, or in a worker the caller provides.

A re-plan solves the stage model for every (range, instance count) pair: tenths of a second on a
few instances, about a second on sixteen under bursty traffic. The simulator does that between
two events, in no simulated time at all; the gateway must not, because the same event loop
relays every client's stream and each of them would stall that long. So the L4 runtime hands
such work (a pure function of frozen inputs) to an ``Offload``: ``Inline`` runs it at once, as
the simulator wants; the gateway passes a ``concurrent.futures`` executor, which satisfies the
same protocol, and applies the result at the first tick after it is ready.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, TypeVar

R = TypeVar("R")


class Offload(Protocol):
    """Runs ``fn`` and returns its future (``concurrent.futures.Executor`` is one)."""

    def submit(self, fn: Callable[[], R], /) -> Future[R]: ...


class Inline:
    """Runs the work before ``submit`` returns: the future is already done."""

    def submit(self, fn: Callable[[], R], /) -> Future[R]:
        done: Future[R] = Future()
        try:
            done.set_result(fn())
        except Exception as exc:  # raised again where the result is read, as from an executor
            done.set_exception(exc)
        return done
