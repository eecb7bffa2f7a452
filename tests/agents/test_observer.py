"""Live windows add up to the same counts as summarising the served requests directly."""

from __future__ import annotations

import numpy as np

from factories import make_instance, req, tiny_profile
from l4.agents.observer import WindowObserver
from l4.core.grid import exponential_grid
from l4.core.summary import summarize_lengths
from l4.instance import Sequence


def test_windows_sum_to_the_whole_requests_counts() -> None:
    profile = tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048)
    grid = exponential_grid(2048, min_tokens=16)
    inst = make_instance(profile)
    obs = WindowObserver(0, grid, smoothing=1.0)
    specs = [req(i, 20 + 37 * i, 5 + 11 * i, arrival_s=0.0) for i in range(12)]
    seqs = [Sequence(s) for s in specs]
    now = 0.0
    for seq in seqs:
        inst.admit(seq)
        obs.note_admitted(seq, now)
    totals = {
        "arrivals": np.zeros(grid.num_buckets),
        "decode_steps": np.zeros(grid.num_buckets),
        "decode_length_sum": np.zeros(grid.num_buckets),
        "crossings": np.zeros(grid.num_buckets),
    }
    next_close = 0.01
    while True:
        plan = inst.plan(now, max_steps=1)
        if plan is None:
            break
        now = plan.end_s
        inst.complete(now)
        if now >= next_close:  # close a window every ~10 ms of served time
            obs.close(inst, now)
            window = obs.last_window
            assert window is not None
            for k in totals:
                totals[k] += getattr(window, k)
            next_close = now + 0.01
    obs.close(inst, now + 1e-3)
    window = obs.last_window
    assert window is not None
    for k in totals:
        totals[k] += getattr(window, k)
    direct = summarize_lengths(
        grid,
        input_tokens=[s.input_tokens for s in specs],
        output_tokens=[s.output_tokens for s in specs],
        duration_s=1.0,
    )
    for k, v in totals.items():
        np.testing.assert_allclose(v, getattr(direct, k), rtol=1e-9, atol=1e-6, err_msg=k)
