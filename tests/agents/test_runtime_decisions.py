"""The runtime's own decisions on hand-built instances (agent_factories): where the front door
places an arrival, when windows close and to whom they are reported, and how boundary moves and
re-plans are applied. Fast unit tests; test_runtime.py checks the invariants of whole runs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent_factories import (
    RUNTIME_CONFIG,
    RUNTIME_PROFILE,
    FakeCluster,
    FakeView,
    far_above,
    runtime_over,
    seq,
)
from factories import log_uniform_summary, policy_context, req
from l4.agents.agent import AgentConfig
from l4.agents.config import L4Config
from l4.agents.leaders import boundary_target, combine_reports, propose_plan
from l4.agents.messages import FRONT, Bid, BoundaryMove, LengthReport, Message, PlanUpdate
from l4.agents.planning import drain_cost_s
from l4.agents.refinement import BoundaryRule
from l4.agents.runtime import L4Runtime, next_slot_s
from l4.agents.stages import StageTable
from l4.core.grid import exponential_grid
from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.costmodel import load_profile
from l4.errors import ValidationError
from l4.instance.sequence import SeqState

ONE = StageTable(boundaries_tokens=(), stage_of_instance=(0, 0, 0))
TWO = StageTable(boundaries_tokens=(100,), stage_of_instance=(0, 1, 1))
THREE = StageTable(boundaries_tokens=(100, 200), stage_of_instance=(0, 1, 2))


def _busy(i: int, length: int = 1000) -> FakeView:
    v = FakeView(i)
    v.add(seq(50 + i, length), length)
    return v


# ---- the front door -----------------------------------------------------------------------------
def test_an_arrival_whose_stage_has_no_kv_room_overflows_to_a_neighbouring_stage() -> None:
    # A 250-token prompt enters stage 2, one instance with its cache full: it goes to stage 1,
    # whose instance has room, rather than queue where it would preempt itself chunk by chunk.
    policy, cluster = runtime_over(THREE, v2=FakeView(2, free=0))
    assert policy.route(req(1, 250, 10), cluster, 0.0) == 1
    assert policy.overflows == 1 and policy.stats()["overflows"] == 1
    assert policy.stays(1) and not policy.stays(2)  # it will not cascade back
    assert all(a.reserved_blocks() == 0 for a in policy.agents)  # awarded or declined
    # Only neighbours take it (stage 0 is two stages away), and only with room now; else, or
    # without overflow, it queues in its entry stage.
    policy, cluster = runtime_over(THREE, v1=FakeView(1, free=0), v2=FakeView(2, free=0))
    assert policy.route(req(1, 250, 10), cluster, 0.0) == 2 and policy.overflows == 0
    no_overflow = replace(RUNTIME_CONFIG, overflow=False)
    policy, cluster = runtime_over(THREE, no_overflow, v2=FakeView(2, free=0))
    assert policy.route(req(1, 250, 10), cluster, 0.0) == 2
    # A stage with room keeps its arrivals.
    policy, cluster = runtime_over(THREE)
    assert policy.route(req(1, 250, 10), cluster, 0.0) == 2 and policy.overflows == 0


def test_arrivals_go_to_the_bidder_that_accepts_earliest() -> None:
    # Instance 0 is idle but full (never accepts); 1 and 2 accept now, 2 is lighter.
    policy, cluster = runtime_over(ONE, v0=FakeView(0, free=0), v1=_busy(1))
    assert policy.route(req(1, 50, 10), cluster, 0.0) == 2
    assert all(a.reserved_blocks() == 0 for a in policy.agents)  # awarded or declined


def test_arrivals_among_equal_bids_go_to_the_lower_id() -> None:
    policy, cluster = runtime_over(ONE, v0=FakeView(0, free=0))
    assert policy.route(req(1, 50, 10), cluster, 0.0) == 1


def test_when_nobody_accepts_now_the_lightest_takes_the_arrival() -> None:
    # All three full and never releasing: equal earliest acceptance, then load decides.
    full = {f"v{i}": FakeView(i, free=0) for i in range(3)}
    full["v0"] = _busy(0)
    full["v0"].free = 0
    policy, cluster = runtime_over(ONE, **full)
    assert policy.route(req(1, 50, 10), cluster, 0.0) == 1


def test_the_entry_stage_is_the_stage_of_the_prompt() -> None:
    policy, cluster = runtime_over(TWO, replace(RUNTIME_CONFIG, overflow=False), v1=_busy(1))
    assert policy.route(req(1, 99, 10), cluster, 0.0) == 0  # a one-instance stage: no ask
    assert policy.bus.sent["Ask"] == 0
    assert policy.route(req(2, 100, 10), cluster, 0.0) == 2
    assert policy.bus.sent["Ask"] == 2
    # With overflow the one instance is asked whether it has room (it has).
    policy, cluster = runtime_over(TWO, v1=_busy(1))
    assert policy.route(req(1, 99, 10), cluster, 0.0) == 0
    assert policy.bus.sent["Ask"] == 1 and policy.overflows == 0


def test_round_robin_inside_the_entry_stage_without_bids() -> None:
    config = replace(RUNTIME_CONFIG, agent=AgentConfig(use_bids=False))
    policy, cluster = runtime_over(TWO, config)
    routed = [policy.route(req(i, 150, 10), cluster, 0.0) for i in range(3)]
    assert routed == [1, 2, 1]
    assert policy.bus.sent["Ask"] == 0


def test_lost_bids_fall_back_to_round_robin() -> None:
    policy, cluster = runtime_over(TWO, v2=FakeView(2))
    policy.bus._drop = lambda dst, msg: isinstance(msg, Bid)
    assert [policy.route(req(i, 150, 10), cluster, 0.0) for i in range(2)] == [1, 2]


# ---- boundary moves and re-plans reaching the front door ---------------------------------------
def _to_front(policy: L4Runtime, msg: Message) -> None:
    policy.bus.send(FRONT, msg)
    policy.bus.flush()


def test_a_boundary_move_of_the_plan_in_force_is_applied_and_counted() -> None:
    policy, _ = runtime_over(TWO)
    _to_front(policy, BoundaryMove(index=1, tokens=150, version=0, sender=0))
    assert policy.table.boundaries_tokens == (150,) and policy.boundary_moves == 1
    _to_front(policy, BoundaryMove(index=1, tokens=160, version=0, sender=0))
    _to_front(policy, BoundaryMove(index=1, tokens=150, version=0, sender=0))
    assert policy.boundary_moves == 3
    _to_front(policy, BoundaryMove(index=1, tokens=120, version=3, sender=0))  # stale plan
    _to_front(policy, BoundaryMove(index=2, tokens=300, version=0, sender=0))  # no such bound
    assert policy.table.boundaries_tokens == (150,) and policy.boundary_moves == 3


def test_a_plan_update_replaces_the_table_and_counts_a_replan() -> None:
    policy, _ = runtime_over(ONE)
    update = PlanUpdate(version=1, boundaries_tokens=(64,), stage_of_instance=(0, 1, 1), sender=0)
    _to_front(policy, update)
    assert policy.table == StageTable(
        boundaries_tokens=(64,), stage_of_instance=(0, 1, 1), version=1
    )
    assert policy.replans == 1
    assert policy.stats()["replans"] == 1 and policy.stats()["stages"] == 2
    _to_front(policy, replace(update, version=2))
    assert policy.replans == 2 and policy.table.version == 2


# ---- windows, reports and the coordinator --------------------------------------------------------
def _reports_sent(policy: L4Runtime) -> int:
    return policy.bus.sent[LengthReport.__name__]


def test_windows_close_every_refinement_period_and_reach_the_leaders() -> None:
    # Three one-instance stages: every agent reports to its own stage's leader and to the leader
    # of the stage above (the two boundaries it touches): 1 + 2 + 2 = 5 reports; at a re-plan the
    # coordinator (leader of stage 0) also gets stage 2's: 6.
    policy, cluster = runtime_over(THREE)
    policy.on_tick(cluster, -1.0)  # no traffic yet: the windows wait for it
    policy.on_tick(cluster, -0.5)
    policy.admitted(seq(1, 50), 0, -0.1)
    policy.on_tick(cluster, 0.0)  # opens the windows
    assert _reports_sent(policy) == 0
    policy.on_tick(cluster, 0.25)
    assert _reports_sent(policy) == 0
    policy.on_tick(cluster, 0.5)
    assert _reports_sent(policy) == 5
    policy.on_tick(cluster, 1.0)  # refinement and re-plan are both due
    assert _reports_sent(policy) == 5 + 6
    policy.on_tick(cluster, 1.5)
    assert _reports_sent(policy) == 5 + 6 + 5


def test_the_first_tick_opens_windows_without_closing_what_came_before_it() -> None:
    # One arrival at 0.0, the first tick 0.1 s later, the first refinement at 0.6: the window is
    # [0, 0.6) with one arrival, not a 0.1 s window of one arrival (10 per second) carried on.
    policy, cluster = runtime_over(TWO)
    s = seq(1, 50)
    policy.admitted(s, 0, 0.0)
    policy.on_tick(cluster, 0.1)
    observer = policy.agents[0].observer
    assert observer.smoothed is None
    policy.on_tick(cluster, 0.6)
    assert observer.smoothed is not None
    rate = observer.smoothed.arrivals.sum() / observer.smoothed.duration_s
    assert rate == pytest.approx(1 / 0.6)


def test_rounds_keep_their_period_when_ticks_land_a_little_late() -> None:
    # The gateway's ticks run about a millisecond off their 0.2 s slots, by varying amounts, and
    # now and then much later (a slow tick before). A round every second for ten seconds is ten
    # rounds (5 reports each), not one whose next is counted from its own late tick, nor one that
    # demands its tick be no earlier than its slot: either waits a whole tick now and then.
    config = replace(
        RUNTIME_CONFIG, replan=False, refinement=replace(RUNTIME_CONFIG.refinement, period_s=1.0)
    )
    policy, cluster = runtime_over(THREE, config)
    policy.admitted(seq(1, 50), 0, 0.0)
    off_s = [0.003, -0.001, 0.004, 0.0, 0.002, -0.002, 0.001]
    for k in range(51):  # 0.0 ... 10.0
        late_s = 0.15 if k == 5 else off_s[k % len(off_s)]
        policy.on_tick(cluster, 0.2 * k + late_s)
    assert _reports_sent(policy) == 10 * 5


def test_a_round_run_late_sets_the_next_a_period_on() -> None:
    assert next_slot_s(10.0, 2.0, 10.2) == 12.0  # late by a tick: the grid holds
    assert next_slot_s(10.0, 2.0, 12.5) == 14.5  # later than a period: no round back to back


def test_without_refinement_windows_close_only_for_replans() -> None:
    policy, cluster = runtime_over(THREE, replace(RUNTIME_CONFIG, refine=False))
    policy.admitted(seq(1, 50), 0, 0.0)
    for now in (0.0, 0.5):
        policy.on_tick(cluster, now)
    assert _reports_sent(policy) == 0
    policy.on_tick(cluster, 1.0)
    assert _reports_sent(policy) == 6


def test_static_runtime_never_reports() -> None:
    policy, cluster = runtime_over(THREE, replace(RUNTIME_CONFIG, refine=False, replan=False))
    for now in (0.0, 0.5, 1.0, 1.5, 2.0):
        policy.on_tick(cluster, now)
    assert _reports_sent(policy) == 0 and policy.replans == 0


def _bimodal(i: int) -> FakeView:
    """Many short decodes and a few long ones: the mix a length split serves better."""
    v = FakeView(i)
    for k in range(12):
        v.add(seq(100 * i + k, 40 + k), 40 + k)
    for k in range(2):
        v.add(seq(100 * i + 50 + k, 1500 + k), 1500 + k)
    return v


def _replan_round(idle: tuple[int, ...]) -> tuple[L4Runtime, FakeCluster, PlanUpdate | None]:
    """One stage of 4; the instances not in ``idle`` run the bimodal mix and report two windows
    of growth; returns the runtime after its re-plan round and what the DP proposes from those
    reports without the drain price."""
    views = {f"v{i}": FakeView(i) if i in idle else _bimodal(i) for i in range(4)}
    table = StageTable.single(4)
    policy, cluster = runtime_over(table, **views)
    policy.on_tick(cluster, 0.0)
    for v in cluster.views.values():  # every request here grew by 20 tokens in the window
        for s in v.run:
            s.instances.append(v.instance_id)
            v.lengths[s.request_id] += 20
    policy.on_tick(cluster, 0.5)
    for v in cluster.views.values():
        for s in v.run:
            v.lengths[s.request_id] += 20
    coordinator = policy.agents[0]
    policy.on_tick(cluster, 1.0)
    reports = [coordinator.reports[i] for i in range(4)]
    assert all(r.sent_s == 1.0 for r in reports)
    summary = combine_reports(policy.grid, reports, arrival_batch_excess=0.0)
    assert summary is not None
    proposal = propose_plan(summary, policy.model, table, min_gain=0.0, sender=0)
    return policy, cluster, proposal


def test_the_coordinator_adopts_the_plan_the_dp_proposes_from_the_reports() -> None:
    # The instances the split moves (2 and 3) are idle: the re-plan drains nothing.
    policy, cluster, expected = _replan_round(idle=(2, 3))
    assert expected is not None and len(expected.boundaries_tokens) >= 1  # the DP splits them
    assert expected.stage_of_instance == (0, 0, 1, 1)
    assert policy.replans == 1
    assert policy.table.boundaries_tokens == expected.boundaries_tokens
    assert policy.table.stage_of_instance == expected.stage_of_instance
    assert all(a.table == policy.table for a in policy.agents)
    moved = [a for a in policy.agents if a.stage != 0]
    assert moved and all(a.draining for a in moved)
    assert all(s.state is SeqState.DECODE for v in cluster.views.values() for s in v.run)


def test_a_re_plan_that_does_not_pay_its_drain_is_not_made() -> None:
    # The same split (1% cheaper by the model) would move instances 2 and 3, busy now: their 28
    # running requests would each migrate once, which costs more than the split gains.
    policy, cluster, proposal = _replan_round(idle=(0, 1))
    assert proposal is not None and proposal.stage_of_instance == (0, 0, 1, 1)
    views = [cluster.instance(i) for i in range(4)]
    running = [[v.length_of(q) for q in v.running()] for v in views]
    period_s = policy.config.replan_period_s
    cost_s = drain_cost_s(
        policy.model, policy.table, running, proposal.stage_of_instance, period_s=period_s
    )
    assert cost_s > 0
    assert policy.replans == 0 and policy.table.num_stages == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"replan_period_s": 0.0}, "re-plan period must be > 0 s"),
        ({"replan_min_gain": -0.1}, r"re-plan gain must lie in \[0, 1\)"),
        ({"replan_min_gain": 1.0}, r"re-plan gain must lie in \[0, 1\)"),
        ({"staged": False}, r"one stage \(staged=False\) neither refines nor re-plans"),
        ({"staged": False, "refine": False}, r"one stage \(staged=False\) neither"),
    ],
)
def test_l4_config_is_validated(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{message}"):
        L4Config(**bad)  # type: ignore[arg-type]
    L4Config(staged=False, refine=False, replan=False)
    L4Config(replan_min_gain=0.0, replan_period_s=0.5)


def test_a_moved_request_is_noted_by_its_destinations_observer() -> None:
    policy, cluster = runtime_over(TWO)
    s = seq(1, 150)
    policy.note_incoming(s, 2, 150, 0.5)
    policy.agents[2].observer.close(cluster.views[2], 0.5)  # opened at the note
    s.instances.append(2)
    cluster.views[2].add(s, 170)
    window = policy.agents[2].observer.close(cluster.views[2], 1.5)
    assert window is not None and window.decode_steps.sum() == 20


def test_a_leader_moves_its_boundary_to_the_rules_target_for_the_reports_it_got() -> None:
    # Every request sits far above the boundary at 64 tokens: stage 0 idles, refinement walks the
    # boundary up by one grid step (max_grid_steps = 1) once windows with decode steps arrive.
    table = StageTable(boundaries_tokens=(64,), stage_of_instance=(0, 1, 1))
    policy, cluster = runtime_over(table, replace(RUNTIME_CONFIG, replan=False), **far_above())
    for now in (0.0, 0.5, 1.0):  # open, first window (requests seen), second (decode steps)
        for v in cluster.views.values():
            for s in v.run:
                v.lengths[s.request_id] += 20
        policy.on_tick(cluster, now)
    leader = policy.agents[0]
    reports = [leader.reports[i] for i in range(3)]
    assert all(r.sent_s == 1.0 for r in reports)
    summary = combine_reports(policy.grid, reports, arrival_batch_excess=0.0)
    assert summary is not None
    target = boundary_target(
        summary, policy.model, table, 1, rule=RUNTIME_CONFIG.rule, config=RUNTIME_CONFIG.refinement,
        requests_seen=sum(r.requests_seen for r in reports),
    )  # fmt: skip
    assert target is not None and policy.grid.edges_tokens[target] == 76
    assert policy.boundary_moves == 1 and policy.table.boundaries_tokens == (76,)
    assert all(a.table == policy.table for a in policy.agents)


def test_agents_act_on_the_tick_time() -> None:
    v0 = FakeView(0)
    v0.add(seq(1, 150), 150)  # past stage 0's bound: cascades at the tick
    policy, cluster = runtime_over(TWO, v0=v0)
    policy.on_tick(cluster, 0.25)
    assert cluster.moves == [(1, 0, 1, "cascade")]
    assert policy.stats()["agent_events"] == {  # type: ignore[comparison-overlap]
        "asks_cascade": 1,
        "bids": 2,
        "moved_cascade_decode": 1,
    }


def test_count_and_memory_ablations_place_their_own_initial_boundaries() -> None:
    # test_leaders.py's log-uniform workload on 8 x H100: the DP splits it into stages.
    h100 = load_profile("h100-llama-3.2-3b")
    grid = exponential_grid(h100.model.max_context_tokens)
    summary = log_uniform_summary(grid, 3, rate=1.0)
    ctx = policy_context(h100, 8, workload=summary)
    qoe = L4Runtime(ctx, RUNTIME_CONFIG)
    for rule in (BoundaryRule.COUNT, BoundaryRule.MEMORY):
        policy = L4Runtime(ctx, replace(RUNTIME_CONFIG, rule=rule))
        expected = qoe.table
        for k in range(1, expected.num_stages):
            target = boundary_target(
                summary, qoe.model, expected, k, rule=rule, config=RUNTIME_CONFIG.refinement,
                requests_seen=0, unlimited=True,
            )  # fmt: skip
            if target is not None:
                expected = expected.with_move(k, grid.edges_tokens[target]) or expected
        assert policy.table == expected
        assert policy.table.stage_of_instance == qoe.table.stage_of_instance
        assert policy.table != qoe.table  # the rule moved a boundary
    assert qoe.table.num_stages > 1


# ---- spill: an arrival its own stage cannot start promptly --------------------------------------
SPILL = replace(RUNTIME_CONFIG, spill=True)


def test_an_arrival_its_stage_cannot_start_spills_to_a_later_idle_instance() -> None:
    # Instance 0 (stage 0) has 200K prompt tokens to prefill: far over half the TTFT SLO of a
    # 50-token prompt. Instances 1 and 2 (stage 1) are idle and equal: the lower id wins the tie.
    policy, cluster = runtime_over(TWO, SPILL, v0=FakeView(0, pending=(200_000, 0.0)))
    assert policy.route(req(1, 50, 10), cluster, 0.0) == 1
    assert policy.spills == 1
    # Without spill the same arrival waits in its own stage.
    plain, cluster = runtime_over(TWO, RUNTIME_CONFIG, v0=FakeView(0, pending=(200_000, 0.0)))
    assert plain.route(req(1, 50, 10), cluster, 0.0) == 0 and plain.spills == 0


def test_an_arrival_its_stage_starts_promptly_does_not_spill() -> None:
    policy, cluster = runtime_over(TWO, SPILL, v1=FakeView(1), v2=FakeView(2))
    assert policy.route(req(1, 50, 10), cluster, 0.0) == 0
    assert policy.spills == 0


def test_no_spill_when_the_later_stage_is_not_cheaper_by_the_margin() -> None:
    # Stage 1's instances are as busy as the entry: spilling would gain nothing.
    busy = {f"v{i}": FakeView(i, pending=(200_000, 0.0)) for i in range(3)}
    policy, cluster = runtime_over(TWO, SPILL, **busy)
    assert policy.route(req(1, 50, 10), cluster, 0.0) == 0
    assert policy.spills == 0


def test_spill_bounds_are_checked() -> None:
    with pytest.raises(ValidationError):
        L4Config(spill_margin=1.0)
    with pytest.raises(ValidationError):
        L4Config(stage_margin=1.0)
    L4Config(spill_margin=0.0, stage_margin=0.0)  # the closed ends are allowed


def _arrive(policy: L4Runtime, cluster: FakeCluster, times: list[float]) -> None:
    for rid, t in enumerate(times, start=1):
        policy.route(req(rid, 50, 10, t), cluster, t)


def test_the_front_door_measures_how_arrivals_bunch_for_the_replans() -> None:
    # 40 arrivals at once every 8 s for 48 s: 4 s windows alternate between 40 and none.
    policy, cluster = runtime_over(ONE)
    _arrive(policy, cluster, [8.0 * b + 0.001 * k for b in range(6) for k in range(40)])
    policy.on_tick(cluster, 0.0)  # the windows open at the first tick after traffic
    assert policy._combined([]) is None
    policy.on_tick(cluster, 48.0)  # a refinement report: the spread is re-measured
    bursts = policy.agents[0].reports
    summary = policy._combined(list(bursts.values()))
    assert summary is not None and summary.arrival_spread is not None
    assert summary.arrival_spread.sum() > 10.0  # index of dispersion ~40 against 1


def test_the_planned_workloads_spread_stands_until_enough_arrivals_are_seen() -> None:
    # An even stream over 20 s: less than half of the 60 s history, so the spread the plan was
    # made with (here none: a summary of lengths alone) is what the re-plans use.
    policy, cluster = runtime_over(ONE)
    _arrive(policy, cluster, [0.1 * k for k in range(200)])
    policy.on_tick(cluster, 0.0)  # the windows open at the first tick after traffic
    policy.on_tick(cluster, 20.0)
    summary = policy._combined(list(policy.agents[0].reports.values()))
    assert summary is not None and summary.arrival_spread is None


def test_a_runtime_that_never_reports_keeps_no_arrivals() -> None:
    # One stage (l4_bids) or pinned ranges run for as long as a gateway does: what only the
    # reports read must not pile up.
    policy, cluster = runtime_over(ONE, replace(RUNTIME_CONFIG, refine=False, replan=False))
    _arrive(policy, cluster, [0.01 * k for k in range(500)])
    assert not policy.front._arrivals_s and not policy.front._recent


def test_a_re_plan_is_adopted_on_its_nth_proposal_in_a_row() -> None:
    policy, _ = runtime_over(ONE, replace(RUNTIME_CONFIG, replan_confirmations=3))
    a = PlanUpdate(version=1, boundaries_tokens=(100,), stage_of_instance=(0, 0, 1), sender=0)
    b = PlanUpdate(version=1, boundaries_tokens=(200,), stage_of_instance=(0, 0, 1), sender=0)
    assert [policy._confirmed(p) for p in (a, b, b, b, b)] == [False, False, False, True, False]


@pytest.mark.parametrize("mechanism", list(MigrationMechanism))
def test_the_migration_stall_is_the_planners_priced_per_64_token_bucket(
    mechanism: MigrationMechanism,
) -> None:
    ctx = policy_context(RUNTIME_PROFILE, 2, migration=MigrationConfig(mechanism=mechanism))
    policy = L4Runtime(ctx, RUNTIME_CONFIG)
    # Replay re-prefills 640 tokens in one chunk: its overhead, the chunk's work and one step.
    want = float(policy.model.migration_latency_s([640.0], tpot_s=0.01, step_s=0.01)[0])
    assert want > 0 and policy.migration_stall_s(640) == pytest.approx(want)
    assert policy.migration_stall_s(703) == policy.migration_stall_s(640)  # the same bucket
    assert policy.migration_stall_s(704) > policy.migration_stall_s(640)
    if mechanism is MigrationMechanism.REPLAY:
        assert want > float(policy.model.migration_latency_s([640.0], tpot_s=0.01, step_s=0.0)[0])
