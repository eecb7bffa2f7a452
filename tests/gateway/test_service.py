"""The gateway's tick schedule: on the simulator's grid whatever a tick costs."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from l4.gateway.service import next_tick_s


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
