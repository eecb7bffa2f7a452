"""The gateway's tick schedule (on the simulator's grid whatever a tick costs) and the thread that
solves the policy's refinement rounds and re-plans off the event loop."""

from __future__ import annotations

import math
import threading
import time

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from l4.gateway.service import PlanningThread, next_tick_s


@given(
    last=st.floats(0.0, 1e5),
    period=st.floats(0.01, 10.0),
    late=st.floats(-0.99, 50.0),
)
def test_the_next_tick_is_the_first_slot_of_the_grid_after_now(
    last: float, period: float, late: float
) -> None:
    # ``late``: how far past the last slot the previous tick ended, in periods (a negative one
    # woke early). The next tick keeps the grid, is at least one period on, lies after now and
    # skips no slot it could still make.
    now = last + late * period
    nxt = next_tick_s(last, now, period)
    slots = (nxt - last) / period
    assert math.isclose(slots, round(slots), abs_tol=1e-6)
    assert round(slots) >= 1
    assert nxt > now - 1e-9 * max(1.0, abs(now))
    assert nxt - period <= max(now, last) + 1e-6 * period + 1e-9 * abs(now)


def test_a_tick_that_ran_long_does_not_shift_the_grid() -> None:
    assert next_tick_s(10.0, 10.05, 0.2) == 10.2  # ran 50 ms: the next slot
    assert math.isclose(next_tick_s(10.0, 10.45, 0.2), 10.6)  # ran 450 ms: two slots skipped


def test_the_planning_thread_solves_off_the_callers_thread_and_times_each_round() -> None:
    registry = CollectorRegistry()
    planner = PlanningThread(Histogram("rounds_seconds", "", registry=registry))
    try:
        done = planner.submit(threading.get_ident)
        assert done.result(timeout=10) != threading.get_ident()
        deadline = time.monotonic() + 10  # the timing callback runs just after the result
        while registry.get_sample_value("rounds_seconds_count") != 1.0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        planner.close()


def test_closing_the_planning_thread_cancels_what_waits_and_lets_a_round_finish() -> None:
    registry = CollectorRegistry()
    planner = PlanningThread(Histogram("rounds_seconds", "", registry=registry))
    go = threading.Event()
    running = planner.submit(lambda: go.wait(10))
    waiting = planner.submit(lambda: True)
    planner.close()
    go.set()
    assert running.result(timeout=10) is True and waiting.cancelled()
