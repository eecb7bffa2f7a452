"""Live windows add up to the same counts as summarising the served requests directly."""

from __future__ import annotations

import numpy as np

from agent_factories import FakeView
from agent_factories import seq as make_seq
from factories import make_instance, req, tiny_profile
from l4.agents.observer import WindowObserver
from l4.core.grid import LengthGrid, exponential_grid
from l4.core.summary import WorkloadSummary, ema, summarize_lengths, summary_from_counts
from l4.instance import Sequence
from l4.instance.sequence import SeqState


def test_windows_sum_to_the_whole_requests_counts() -> None:
    profile = tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048)
    grid = exponential_grid(2048, min_tokens=16)
    inst = make_instance(profile)
    obs = WindowObserver(0, grid, smoothing=1.0)
    specs = [req(i, 20 + 37 * i, 5 + 11 * i, arrival_s=0.0) for i in range(12)]
    # Prompts on a grid edge: their first decode reaches that edge, which is no crossing.
    specs += [req(12 + k, grid.edges_tokens[k], 9, arrival_s=0.0) for k in (2, 4)]
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


def _same(a: WorkloadSummary | None, b: WorkloadSummary) -> None:
    assert a is not None
    assert a.duration_s == b.duration_s and a.max_length_tokens == b.max_length_tokens
    for name in ("arrivals", "prompt_tokens", "decode_steps", "decode_length_sum", "crossings"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), err_msg=name)


def _window(
    grid: LengthGrid, d: float, prompts: list[int], spans: list[tuple[int, int, bool]]
) -> WorkloadSummary:
    return summary_from_counts(
        grid,
        duration_s=d,
        prompts=np.asarray(prompts, np.float64),
        starts=np.asarray([s for s, _, _ in spans], np.float64),
        ends=np.asarray([e for _, e, _ in spans], np.float64),
        starts_at_prompt=np.asarray([f for *_, f in spans], dtype=bool),
    )


def test_windows_count_the_contexts_each_request_decoded_here() -> None:
    """By hand, on a fake instance: which span of each request a window counts, and whether it
    starts at the prompt (no crossing into its first bucket)."""
    grid = exponential_grid(2048, min_tokens=16)
    obs = WindowObserver(0, grid, smoothing=0.5)
    view = FakeView(0)
    assert obs.close(view, 0.0) is None  # nothing seen yet: the first window opens
    a = view.add(make_seq(1, 50), 50)  # type: ignore[arg-type]
    a.instances.append(0)
    obs.note_admitted(a, 0.0)
    # Window 1 (1 s): a went from its prompt (50) to 70; still here.
    view.lengths[1] = 70
    first = obs.close(view, 1.0)
    w1 = _window(grid, 1.0, [50], [(50, 70, True)])
    _same(first, w1)
    _same(obs.last_window, w1)
    assert obs.requests_seen == 1
    assert obs.close(view, 1.0) is first  # an empty window changes nothing
    # Window 2 (2 s): a 70 -> 90; b appears decoding without a note (it came by a preemption)
    # at 30 and has not moved yet; c arrives, moves to instance 1 after 40 -> 45 here.
    view.lengths[1] = 90
    b = view.add(make_seq(2, 30), 30)  # type: ignore[arg-type]
    b.instances.append(0)
    c = make_seq(3, 40)
    c.instances.append(0)
    obs.note_incoming(c, 40, 1.5)
    c.instances.append(1)
    c.generated_tokens = 5  # 40 + 5 when it left; the view's length of it is stale
    view.lengths[3] = 999
    second = obs.close(view, 3.0)
    w2 = _window(grid, 2.0, [], [(70, 90, False), (40, 45, False)])
    _same(obs.last_window, w2)
    _same(second, ema(w1, w2, 0.5))
    assert obs.requests_seen == 3  # a, b and c (c then forgotten: it left)
    # Window 3 (1 s): b 30 -> 45, a finished at 95 (its materialised counters).
    view.lengths[2] = 45
    a.state = SeqState.FINISHED
    a.generated_tokens = 45
    obs.close(view, 4.0)
    _same(obs.last_window, _window(grid, 1.0, [], [(90, 95, False), (30, 45, False)]))
    assert obs.requests_seen == 2


def test_a_request_noted_before_its_prefill_still_starts_at_its_prompt() -> None:
    grid = exponential_grid(2048, min_tokens=16)
    obs = WindowObserver(0, grid, smoothing=1.0)
    view = FakeView(0)
    a = view.add(make_seq(1, 50, SeqState.WAITING), 50)  # type: ignore[arg-type]
    a.instances.append(0)
    obs.note_admitted(a, 0.0)
    obs.close(view, 1.0)  # no progress: nothing counted, and it still starts at its prompt
    _same(obs.last_window, _window(grid, 1.0, [50], []))
    a.state = SeqState.DECODE
    view.lengths[1] = 60
    obs.close(view, 2.0)
    _same(obs.last_window, _window(grid, 1.0, [], [(50, 60, True)]))


def test_a_detached_request_counts_what_it_decoded_before_leaving() -> None:
    grid = exponential_grid(2048, min_tokens=16)
    obs = WindowObserver(0, grid, smoothing=1.0)
    view = FakeView(0)
    d = make_seq(1, 100)
    d.instances.append(0)
    obs.note_incoming(d, 100, 0.0)
    d.state = SeqState.DETACHED
    d.generated_tokens = 8  # 100 + 8 when it was detached (the stale view says otherwise)
    view.lengths[1] = 500
    obs.close(view, 1.0)
    _same(obs.last_window, _window(grid, 1.0, [], [(100, 108, False)]))
    assert obs.requests_seen == 1
    obs.close(view, 2.0)
    assert obs.requests_seen == 0


def test_a_request_handed_on_counts_here_only_up_to_where_it_left() -> None:
    # The gateway keeps one request's counters across instances: e, moved on at 108, has 150
    # tokens by the close (42 of them decoded at the destination, which counts them from 108);
    # f, ordered on at 208, still streams here at 211 until the hand-off cuts it.
    grid = exponential_grid(2048, min_tokens=16)
    obs = WindowObserver(0, grid, smoothing=1.0)
    view = FakeView(0)
    e = make_seq(1, 100)
    e.instances.append(0)
    obs.note_incoming(e, 100, 0.0)
    obs.note_left(e, 108)
    e.instances.append(1)
    e.generated_tokens = 50
    f = view.add(make_seq(2, 200), 211)  # type: ignore[arg-type]
    f.instances.append(0)
    obs.note_incoming(f, 200, 0.0)
    obs.note_left(f, 208)
    obs.close(view, 1.0)
    _same(obs.last_window, _window(grid, 1.0, [], [(100, 108, False), (200, 208, False)]))
    view.lengths[2] = 215
    obs.close(view, 2.0)  # f is still seen here: nothing more of it is this instance's
    _same(obs.last_window, _window(grid, 1.0, [], []))
    # Back here later, it is counted afresh from where it came back.
    obs.note_incoming(f, 230, 2.5)
    view.lengths[2] = 240
    obs.close(view, 3.0)
    _same(obs.last_window, _window(grid, 1.0, [], [(230, 240, False)]))
