"""L4's runtime in the simulator: nothing lost across cascades, trades and re-plans; cascades go
downstream only; reservations never leak; one instance behaves exactly like a lone instance."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import policy_context, req, tiny_profile
from l4.agents.agent import AgentConfig
from l4.agents.config import L4Config
from l4.agents.messages import Award, Decline, Message
from l4.agents.refinement import RefinementConfig
from l4.agents.runtime import L4Runtime
from l4.agents.stages import StageTable
from l4.core.grid import exponential_grid
from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.core.summary import summarize_requests
from l4.errors import ValidationError
from l4.instance import InstanceConfig
from l4.instance import Sequence as Seq
from l4.policies.base import make_policy
from l4.request import RequestSpec
from l4.sim.cluster import SimOutcome, Simulation
from l4.views import PolicyContext

PROFILE = tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048)
GRID = exponential_grid(2048, min_tokens=32)
# Everything happens often, so a short run goes through many hand-offs, trades and re-plans (the
# mean-latency objective, which stages this tiny workload, and no hysteresis: the machinery is
# under test here, not the objective).
BUSY = L4Config(
    replan_period_s=0.3,
    replan_min_gain=0.0,
    replan_confirmations=1,
    objective=None,
    stage_margin=0.0,
    agent=AgentConfig(tick_s=0.01, balance_threshold=0.05),
    refinement=RefinementConfig(period_s=0.05, freeze_min_requests=0, min_relative_move=0.0),
)


def _workload(seed: int, n: int) -> list[RequestSpec]:
    rng = random.Random(seed)
    out = []
    t = 0.0
    for i in range(n):
        t += rng.expovariate(200.0)
        prompt = rng.choice([rng.randint(8, 120), rng.randint(200, 900)])
        out.append(req(i, prompt, rng.randint(1, 400), arrival_s=t))
    return out


def _ctx(
    n: int,
    specs: list[RequestSpec],
    mechanism: MigrationMechanism,
    plan: bool,
    expected: list[RequestSpec] | None = None,
) -> PolicyContext:
    return policy_context(
        PROFILE,
        n,
        workload=summarize_requests(GRID, expected or specs) if plan else None,
        migration=MigrationConfig(mechanism=mechanism),
    )


class Recorder(Simulation):
    """Logs every migration with the stages of its ends at the moment it is asked for."""

    log: list[tuple[str, int, int, int, int | None]]

    def migrate(self, seq: Seq, src: int, dst: int, reason: str) -> bool:
        policy = self.policy
        assert isinstance(policy, L4Runtime)
        table = policy.agents[src].table
        _, hi = table.bounds(table.stage_of_instance[src])
        self.log.append(
            (
                reason,
                table.stage_of_instance[src],
                table.stage_of_instance[dst],
                self.instances[src].length_of(seq),
                hi,
            )
        )
        return super().migrate(seq, src, dst, reason)


def _run(
    specs: list[RequestSpec], policy: L4Runtime, n: int, mechanism: MigrationMechanism
) -> tuple[SimOutcome, Recorder]:
    sim = Recorder(
        profile=PROFILE,
        instance_config=InstanceConfig.from_profile(PROFILE),
        num_instances=n,
        policy=policy,
        migration=MigrationConfig(mechanism=mechanism),
        check_every_event=True,
    )
    sim.log = []
    return sim.run(specs, drain_s=600.0), sim


@settings(max_examples=12, deadline=None)
@given(
    st.integers(0, 10**6),
    st.sampled_from(list(MigrationMechanism)),
    st.integers(2, 5),
    st.booleans(),
)
def test_nothing_is_lost_and_cascades_only_go_downstream(
    seed: int, mechanism: MigrationMechanism, n: int, plan: bool
) -> None:
    specs = _workload(seed, 120)
    policy = L4Runtime(_ctx(n, specs, mechanism, plan), BUSY)
    outcome, sim = _run(specs, policy, n, mechanism)  # check_every_event: no loss, no duplicate
    assert all(r.generated_tokens == r.output_tokens for r in outcome.records)
    for reason, src_stage, dst_stage, length, hi in sim.log:
        if reason == "cascade":
            assert dst_stage > src_stage
            assert hi is not None and length >= hi
    assert all(a.reserved_blocks() == 0 for a in policy.agents)


def test_busy_runs_really_cascade_and_trade() -> None:
    # Whether a run re-plans depends on everything upstream; the decision itself is pinned in
    # test_runtime_decisions.py (the coordinator adopts what the DP proposes from the reports).
    specs = _workload(7, 300)
    policy = L4Runtime(_ctx(4, specs, MigrationMechanism.KV_TRANSFER, False), BUSY)
    outcome, sim = _run(specs, policy, 4, MigrationMechanism.KV_TRANSFER)
    reasons = {r for r, *_ in sim.log}
    assert {"cascade", "balance"} <= reasons
    assert sum(outcome.migrations_by_reason.values()) > 0


def test_one_stage_trades_but_never_splits_or_cascades() -> None:
    specs = _workload(7, 300)
    config = replace(BUSY, staged=False, refine=False, replan=False)
    policy = L4Runtime(_ctx(4, specs, MigrationMechanism.KV_TRANSFER, True), config)
    outcome, sim = _run(specs, policy, 4, MigrationMechanism.KV_TRANSFER)
    reasons = {r for r, *_ in sim.log}
    assert policy.table.num_stages == 1 and policy.replans == 0 and policy.boundary_moves == 0
    assert "balance" in reasons and "cascade" not in reasons
    assert all(r.finish_s is not None for r in outcome.records)


def test_refinement_moves_boundaries_planned_for_another_workload() -> None:
    specs = _workload(9, 300)
    config = replace(BUSY, replan=False)
    policy = L4Runtime(_ctx(4, specs, MigrationMechanism.KV_TRANSFER, False), config)
    # Boundaries far below the lengths that come: refinement must walk them up the grid.
    planned = StageTable(boundaries_tokens=(64, 76), stage_of_instance=(0, 1, 2, 2))
    policy.table = planned
    for a in policy.agents:
        a.table = planned
    _run(specs, policy, 4, MigrationMechanism.KV_TRANSFER)
    assert policy.boundary_moves >= 2
    assert policy.table.boundaries_tokens[0] > 64
    assert all(a.table == policy.table for a in policy.agents)  # everyone applied the same moves


def test_lost_awards_and_declines_never_leak_reservations() -> None:
    specs = _workload(3, 150)

    def lose(dst: int, msg: Message) -> bool:
        return isinstance(msg, Award | Decline)

    policy = L4Runtime(_ctx(3, specs, MigrationMechanism.KV_TRANSFER, True), BUSY, drop=lose)
    outcome, _ = _run(specs, policy, 3, MigrationMechanism.KV_TRANSFER)
    assert policy.bus.dropped > 0
    assert all(r.finish_s is not None for r in outcome.records)
    # Reservations outlive their bids by at most the bid timeout: none is older at the end.
    end = outcome.sim_end_s + BUSY.agent.bid_timeout_s
    for a in policy.agents:
        a.handle(Award(ask_id=-1, sender=0))  # any message: let the agent expire what is due
        a._expire(end)
        assert a.reserved_blocks() == 0
    assert sum(a.stats.get("reservations_expired", 0) for a in policy.agents) > 0


@pytest.mark.parametrize("name", ["l4", "l4_static", "l4_count", "l4_memory", "l4_rr", "l4_bids"])
def test_one_instance_behaves_exactly_like_a_lone_instance(name: str) -> None:
    specs = _workload(5, 150)
    ctx = _ctx(1, specs, MigrationMechanism.KV_TRANSFER, True)
    results = []
    for policy_name in (name, "round_robin"):
        sim = Simulation(
            profile=PROFILE,
            instance_config=ctx.instance_config,
            num_instances=1,
            policy=make_policy(policy_name, ctx),
        )
        results.append(sim.run(specs))
    l4, alone = results
    # Same tokens, same instances, same times — up to float rounding: observing an instance at a
    # tick commits its closed-form steps, which re-associates the sums of step times.
    assert len(l4.records) == len(alone.records)
    for a, b in zip(l4.records, alone.records, strict=True):
        assert replace(a, first_token_s=0.0, finish_s=0.0) == replace(
            b, first_token_s=0.0, finish_s=0.0
        )
        assert a.first_token_s == pytest.approx(b.first_token_s, abs=1e-9)
        assert a.finish_s == pytest.approx(b.finish_s, abs=1e-9)
    assert l4.migrations_by_reason == {}


def test_same_inputs_same_run() -> None:
    specs = _workload(11, 150)
    runs = [
        _run(
            specs,
            L4Runtime(_ctx(3, specs, MigrationMechanism.REPLAY, True), BUSY),
            3,
            MigrationMechanism.REPLAY,
        )[0]
        for _ in range(2)
    ]
    assert runs[0].records == runs[1].records
    assert runs[0].migrations_by_reason == runs[1].migrations_by_reason


def test_ablations_are_registered_with_their_settings() -> None:
    specs = _workload(1, 50)
    ctx = _ctx(4, specs, MigrationMechanism.KV_TRANSFER, True)
    names = ("l4", "l4_static", "l4_count", "l4_memory", "l4_rr", "l4_bids")
    made = {n: make_policy(n, ctx) for n in names}
    cfg = {n: p.config for n, p in made.items() if isinstance(p, L4Runtime)}
    assert cfg["l4_static"].refine is False and cfg["l4_static"].replan is False
    assert cfg["l4_rr"].agent.use_bids is False
    assert cfg["l4_bids"].staged is False
    with pytest.raises(ValidationError, match="one stage"):
        L4Config(staged=False)
    assert cfg["l4"] == replace(L4Config())


def test_a_re_plan_needs_the_same_proposal_in_consecutive_rounds() -> None:
    from l4.agents.messages import PlanUpdate

    specs = _workload(1, 20)
    policy = L4Runtime(_ctx(4, specs, MigrationMechanism.KV_TRANSFER, False), L4Config())
    a = PlanUpdate(version=1, boundaries_tokens=(100,), stage_of_instance=(0, 0, 1, 1), sender=0)
    b = PlanUpdate(version=1, boundaries_tokens=(200,), stage_of_instance=(0, 0, 1, 1), sender=0)
    assert not policy._confirmed(a)
    assert not policy._confirmed(b)  # another proposal restarts the count
    assert policy._confirmed(b)  # the second round in a row: adopted
    assert not policy._confirmed(b)  # and the count starts over
    assert not policy._confirmed(None)
    assert not policy._confirmed(b)
    with pytest.raises(ValidationError):
        L4Config(replan_confirmations=0)
    with pytest.raises(ValidationError):
        L4Config(stage_margin=1.0)


def _pinned(spill: bool) -> tuple[L4Runtime, Simulation]:
    from l4.views import StaticPlan

    ctx = policy_context(
        PROFILE, 2, static_plan=StaticPlan(boundaries_tokens=(500,), stage_sizes=(1, 1))
    )
    policy = L4Runtime(ctx, L4Config(spill=spill))
    sim = Simulation(
        profile=PROFILE,
        instance_config=ctx.instance_config,
        num_instances=2,
        policy=policy,
        cost=ctx.cost,
    )
    return policy, sim


def test_an_arrival_its_stage_cannot_start_promptly_spills_to_an_idle_later_stage() -> None:
    policy, sim = _pinned(spill=True)
    sim.instances[0].admit(Seq(req(900, 1800, 10)))  # stage 0's only instance: 1,800 to prefill
    assert policy.route(req(1, 100, 10), sim, 0.0) == 1
    assert policy.spills == 1
    # Without spill it waits in its own stage.
    nospill, sim2 = _pinned(spill=False)
    sim2.instances[0].admit(Seq(req(900, 1800, 10)))
    assert nospill.route(req(1, 100, 10), sim2, 0.0) == 0


def test_a_spill_never_queues_in_front_of_the_later_stage_s_own_requests() -> None:
    policy, sim = _pinned(spill=True)
    sim.instances[0].admit(Seq(req(900, 1800, 10)))
    sim.instances[1].admit(Seq(req(901, 1200, 10)))  # a long request waiting in stage 1
    assert policy.route(req(1, 100, 10), sim, 0.0) == 0
    assert policy.spills == 0


def test_no_spill_when_the_entry_stage_admits_promptly() -> None:
    policy, sim = _pinned(spill=True)
    assert policy.route(req(1, 100, 10), sim, 0.0) == 0
    assert policy.spills == 0


def test_under_plain_replay_only_cheap_decoding_requests_move_for_balance() -> None:
    specs = _workload(7, 300)
    moved: dict[MigrationMechanism, int] = {}
    for mechanism in MigrationMechanism:
        config = replace(BUSY, staged=False, refine=False, replan=False)
        policy = L4Runtime(_ctx(4, specs, mechanism, False), config)
        _run(specs, policy, 4, mechanism)
        totals = policy.stats()["agent_events"]
        assert isinstance(totals, dict)
        moved[mechanism] = int(totals.get("moved_balance_decode", 0))
    # kv-transfer stalls a request for a stop-and-copy; replay re-prefills its whole context
    # (cheap in this tiny profile, so some still move), and with no stall allowed none does.
    assert moved[MigrationMechanism.KV_TRANSFER] > 0
    kv_stall = L4Runtime(
        _ctx(4, specs, MigrationMechanism.KV_TRANSFER, False), BUSY
    ).migration_stall_s(1500)
    replay_stall = L4Runtime(
        _ctx(4, specs, MigrationMechanism.REPLAY, False), BUSY
    ).migration_stall_s(1500)
    assert replay_stall > kv_stall
    strict = replace(BUSY.agent, balance_max_stall_steps=0.0)
    config = replace(BUSY, staged=False, refine=False, replan=False, agent=strict)
    policy = L4Runtime(_ctx(4, specs, MigrationMechanism.REPLAY, False), config)
    _run(specs, policy, 4, MigrationMechanism.REPLAY)
    totals = policy.stats()["agent_events"]
    assert isinstance(totals, dict) and totals.get("moved_balance_decode", 0) == 0
