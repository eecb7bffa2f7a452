"""Refinement and re-planning solved away from the runtime's thread (``l4.agents.planning``): a
round's result is sent at the first tick after it is ready, the next round waits for it, a
proposal overtaken by a change of membership is dropped, and a solver's error is the tick's."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import pytest

from agent_factories import RUNTIME_CONFIG, FakeCluster, FakeView, far_above, runtime_over, seq
from l4.agents.messages import LengthReport
from l4.agents.runtime import L4Runtime
from l4.agents.stages import StageTable
from l4.errors import InvariantError
from l4.offload import Inline


class Held:
    """A worker that is still busy: nothing is solved until the test releases it."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], Any], Future[Any]]] = []

    def submit(self, fn: Callable[[], Any], /) -> Future[Any]:
        done: Future[Any] = Future()
        self.queue.append((fn, done))
        return done

    def release(self) -> None:
        for fn, done in self.queue:
            done.set_result(fn())
        self.queue.clear()

    def fail(self, exc: BaseException) -> None:
        for _, done in self.queue:
            done.set_exception(exc)
        self.queue.clear()


def _reports(policy: L4Runtime) -> int:
    return policy.bus.sent.get(LengthReport.__name__, 0)


# ---- boundary moves ------------------------------------------------------------------------------
def _leader_world(offload: Inline | Held) -> tuple[L4Runtime, FakeCluster]:
    """Every request far above the boundary at 64 tokens: the leader of stage 0 moves it up one
    grid step (to 76) once a window with decode steps is reported (tick 1.0)."""
    table = StageTable(boundaries_tokens=(64,), stage_of_instance=(0, 1, 1))
    config = replace(RUNTIME_CONFIG, replan=False)
    return runtime_over(table, config, offload=offload, **far_above())


def _tick(policy: L4Runtime, cluster: FakeCluster, now: float) -> None:
    for v in cluster.views.values():
        for s in v.run:
            v.lengths[s.request_id] += 20
    policy.on_tick(cluster, now)


def test_a_round_solved_elsewhere_is_sent_at_the_first_tick_after_it_is_ready() -> None:
    inline, c1 = _leader_world(Inline())
    held = Held()
    deferred, c2 = _leader_world(held)
    for now in (0.0, 0.5, 1.0):
        _tick(inline, c1, now)
        _tick(deferred, c2, now)
    assert inline.table.boundaries_tokens == (76,)
    assert deferred.table.boundaries_tokens == (64,) and len(held.queue) == 1
    # The next round (due at 1.5) waits for this one: no second job, no window closed.
    sent = _reports(deferred)
    _tick(deferred, c2, 1.5)
    assert len(held.queue) == 1 and _reports(deferred) == sent
    assert deferred.table.boundaries_tokens == (64,) and deferred.boundary_moves == 0
    held.release()
    _tick(deferred, c2, 1.7)
    # The same move as solved inline, one tick late; then the waiting round starts at once.
    assert deferred.table.boundaries_tokens == (76,) and deferred.boundary_moves == 1
    assert all(a.table == deferred.table for a in deferred.agents)
    assert len(held.queue) == 1 and _reports(deferred) > sent


def test_a_solvers_error_is_raised_by_the_tick_and_the_next_round_still_runs() -> None:
    held = Held()
    policy, cluster = _leader_world(held)
    for now in (0.0, 0.5, 1.0):
        _tick(policy, cluster, now)
    held.fail(InvariantError("the solver broke"))
    with pytest.raises(InvariantError, match="the solver broke"):
        _tick(policy, cluster, 1.2)
    _tick(policy, cluster, 1.5)  # due: a new round goes out
    assert len(held.queue) == 1
    held.release()
    _tick(policy, cluster, 1.7)
    assert policy.table.boundaries_tokens == (76,)


# ---- re-plans ------------------------------------------------------------------------------------
def _bimodal(i: int) -> FakeView:
    """Many short decodes and a few long ones: the mix a length split serves better."""
    v = FakeView(i)
    for k in range(12):
        v.add(seq(100 * i + k, 40 + k), 40 + k).instances.append(i)
    for k in range(2):
        v.add(seq(100 * i + 50 + k, 1500 + k), 1500 + k).instances.append(i)
    return v


def _replan_pending() -> tuple[L4Runtime, FakeCluster, Held]:
    """One stage of 4, instances 0 and 1 busy with the bimodal mix, 2 and 3 idle: the re-plan
    round of tick 1.0 splits them in two stages (the split drains nothing), held unsolved."""
    held = Held()
    views = {f"v{i}": _bimodal(i) for i in (0, 1)}
    policy, cluster = runtime_over(StageTable.single(4), offload=held, **views)
    for now in (0.0, 0.5, 1.0):
        _tick(policy, cluster, now)
    assert len(held.queue) == 1 and policy.table.num_stages == 1
    return policy, cluster, held


def test_a_re_plan_solved_elsewhere_is_adopted_when_ready() -> None:
    policy, cluster, held = _replan_pending()
    held.release()
    _tick(policy, cluster, 1.1)
    assert policy.replans == 1 and policy.table.num_stages == 2
    assert all(a.table == policy.table for a in policy.agents)


def test_a_re_plan_overtaken_by_a_change_of_membership_is_dropped() -> None:
    policy, cluster, held = _replan_pending()
    cluster.views[3].available = False  # the gateway took instance 3 out meanwhile
    _tick(policy, cluster, 1.1)
    assert policy.membership_changes == 1 and policy.table.out == {3}
    after = policy.table
    held.release()
    _tick(policy, cluster, 1.2)
    # The proposal was solved for four serving instances: it would put 3 back to work.
    assert policy.replans == 0 and policy.table == after
