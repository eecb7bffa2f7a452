"""Refinement, re-planning and a change of membership's plan solved away from the runtime's thread
(``l4.agents.planning``): a round's result is sent at the first tick after it is ready, the next
round waits for it, a result overtaken by a change of membership is dropped, a solver's error is
the tick's, and a change of membership keeps the ranges in force until its plan is solved."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import pytest

from agent_factories import (
    RUNTIME_CONFIG,
    FakeCluster,
    FakeView,
    far_above,
    runtime_over,
    seq,
)
from factories import log_uniform_summary, policy_context
from l4.agents.messages import LengthReport
from l4.agents.runtime import L4Runtime
from l4.agents.stages import StageTable
from l4.core.grid import exponential_grid
from l4.costmodel import load_profile
from l4.errors import InvariantError
from l4.gateway.book import LiveCluster, LiveInstance
from l4.offload import Inline


class Held:
    """A worker that is still busy: nothing is solved until the test releases it."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], Any], Future[Any]]] = []
        self.instant = False  # True: solve from now on as Inline does

    def submit(self, fn: Callable[[], Any], /) -> Future[Any]:
        done: Future[Any] = Future()
        self.queue.append((fn, done))
        if self.instant:
            self.release()
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
    held.release()  # the re-plan, then the plan for the three instances that serve
    _tick(policy, cluster, 1.2)
    # The proposal was solved for four serving instances: it would put 3 back to work.
    assert policy.replans == 0 and policy.table.out == {3}


# ---- changes of membership -----------------------------------------------------------------------
def _planned(offload: Inline | Held) -> tuple[L4Runtime, LiveCluster]:
    """Four H100 instances planned in three stages (sizes 1, 1, 2) from log-uniform lengths,
    over the gateway's live view."""
    profile = load_profile("h100-llama-3.2-3b")
    workload = log_uniform_summary(exponential_grid(profile.model.max_context_tokens), 3, rate=1.0)
    ctx = policy_context(profile, 4, workload=workload, offload=offload)
    instances = [
        LiveInstance(
            i, num_kv_blocks=512, block_size_tokens=16, max_num_batched_tokens=2048,
            max_num_seqs=256,
        )
        for i in range(4)
    ]  # fmt: skip
    cluster = LiveCluster(instances, clock=lambda: 0.0)
    rt = L4Runtime(ctx, RUNTIME_CONFIG)
    rt.on_tick(cluster, 0.0)
    return rt, cluster


def test_a_change_of_membership_keeps_the_ranges_until_its_plan_is_solved() -> None:
    inline, c1 = _planned(Inline())
    held = Held()
    deferred, c2 = _planned(held)
    before = deferred.table
    assert before == inline.table and before.num_stages == 3
    for cluster in (c1, c2):
        cluster.instances[1].healthy = False
    inline.on_tick(c1, 0.2)
    deferred.on_tick(c2, 0.2)
    # At once: instance 1 is out and the ranges in force are kept over the other three.
    kept = deferred.table
    assert kept.out == {1} and kept.boundaries_tokens == before.boundaries_tokens
    assert sorted(i for g in deferred.groups() for i in g) == [0, 2, 3]
    assert len(held.queue) == 1 and deferred.membership_changes == 1
    held.release()
    deferred.on_tick(c2, 0.4)
    # Then the DP's plan for three instances, the one solved inline at once.
    assert deferred.table.boundaries_tokens == inline.table.boundaries_tokens
    assert deferred.table.stage_of_instance == inline.table.stage_of_instance
    assert deferred.table.version == kept.version + 1 and deferred.membership_changes == 1
    assert all(a.table == deferred.table for a in deferred.agents)


def test_a_membership_plan_overtaken_by_another_change_is_dropped() -> None:
    held = Held()
    rt, cluster = _planned(held)
    cluster.instances[1].healthy = False
    rt.on_tick(cluster, 0.2)
    assert len(held.queue) == 1
    cluster.instances[1].healthy = True  # back before the plan without it was solved...
    held.instant = True  # ...and the plan with it solved at once
    rt.on_tick(cluster, 0.4)
    back = rt.table
    assert back.out == frozenset() and rt.membership_changes == 2
    held.release()  # the plan for three instances comes late
    rt.on_tick(cluster, 0.6)
    assert rt.table == back
