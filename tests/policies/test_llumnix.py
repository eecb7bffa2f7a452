"""Llumnix: freeness dispatch with queued demand, and threshold-driven pair migration."""

from __future__ import annotations

import math
import random

import pytest

from factories import RecordingCluster, policy_context, req, tiny_profile
from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.instance import SeqState
from l4.instance import Sequence as Seq
from l4.policies.base import make_policy
from l4.policies.llumnix import Llumnix, LlumnixConfig
from l4.request import RequestSpec
from l4.sim.cluster import SimOutcome, Simulation
from l4.views import ClusterView, PolicyContext


def _ctx(
    n: int, *, kv_tokens: int = 3072, mechanism: MigrationMechanism | None = None
) -> PolicyContext:
    profile = tiny_profile(kv_capacity_tokens=kv_tokens, max_context_tokens=2048)
    return policy_context(
        profile,
        n,
        migration=MigrationConfig(mechanism=mechanism or MigrationMechanism.KV_TRANSFER),
    )


def _sim(ctx: PolicyContext, policy: Llumnix) -> Simulation:
    return Simulation(
        profile=ctx.profile,
        instance_config=ctx.instance_config,
        num_instances=ctx.num_instances,
        policy=policy,
        migration=ctx.migration,
        cost=ctx.cost,
        check_every_event=True,
    )


_next_id = iter(range(10_000, 1_000_000))


def _queue(sim: Simulation, i: int, prompt_tokens: int) -> Seq:
    seq = Seq(req(next(_next_id), prompt_tokens, 50))
    sim.instances[i].admit(seq)
    return seq


def _decoding(sim: Simulation, i: int, prompts: list[int]) -> list[Seq]:
    """Admit `prompts` at instance i and step it until all of them decode."""
    seqs = [_queue(sim, i, p) for p in prompts]
    inst = sim.instances[i]
    now = 0.0
    while any(s.state is not SeqState.DECODE for s in seqs):
        plan = inst.plan(now, max_steps=1)
        assert plan is not None
        now = plan.end_s
        inst.complete(now)
    return seqs


def test_dispatch_counts_queued_demand_not_just_requests() -> None:
    ctx = _ctx(2)  # 3072 tokens = 192 blocks of 16
    policy = Llumnix(ctx)
    sim = _sim(ctx, policy)
    _queue(sim, 0, 2000)  # one queued prompt of 125 blocks: (192 - 125) / 1 = 67 per request
    _queue(sim, 1, 50)
    _queue(sim, 1, 50)  # two small ones, 4 blocks each: (192 - 8) / 2 = 92 per request
    assert policy.dispatch_freeness(sim.instance(0)) == pytest.approx(67.0)
    assert policy.dispatch_freeness(sim.instance(1)) == pytest.approx(92.0)
    assert policy.route(req(0, 10, 10), sim, 0.0) == 1
    # vLLM's request-count balancer would have chosen the other one.
    assert make_policy("least_load", ctx).route(req(0, 10, 10), sim, 0.0) == 0


def test_an_empty_instance_is_infinitely_free_and_ties_go_to_the_lowest_id() -> None:
    ctx = _ctx(3)
    policy = Llumnix(ctx)
    sim = _sim(ctx, policy)
    _queue(sim, 0, 100)
    assert math.isinf(policy.dispatch_freeness(sim.instance(1)))
    assert policy.route(req(0, 10, 10), sim, 0.0) == 1


def test_a_burst_spreads_because_queued_prompts_count_at_once() -> None:
    ctx = _ctx(4)
    specs = [req(i, 300, 20, 0.0) for i in range(8)]
    out = _sim(ctx, Llumnix(ctx)).run(specs)
    first = [r.instances[0] for r in out.records]
    assert sorted(first) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_running_prefills_count_their_whole_prompt() -> None:
    ctx = _ctx(1)  # budget 256 tokens per step: a 1000-token prompt takes four chunks
    policy = Llumnix(ctx)
    sim = _sim(ctx, policy)
    seq = _queue(sim, 0, 1000)
    inst = sim.instances[0]
    plan = inst.plan(0.0, max_steps=1)
    assert plan is not None
    inst.complete(plan.end_s)
    assert seq.state is SeqState.PREFILL and seq.blocks == 16
    # 192 blocks minus the 63 the prompt will hold, for one request.
    assert policy.dispatch_freeness(inst) == pytest.approx(192 - 63)


def test_pairs_least_free_source_with_freest_destination_under_threshold() -> None:
    ctx = _ctx(4)
    policy = Llumnix(ctx)
    sim = _sim(ctx, policy)
    _decoding(sim, 0, [200] * 11)  # 11 x 13 blocks of 192: about 4 free blocks per request
    _decoding(sim, 1, [200] * 9)  # about 8 per request
    _decoding(sim, 2, [200])  # about 178
    f = [policy.migration_freeness(sim.instance(i)) for i in range(4)]
    assert f[0] < f[1] < f[2] < f[3] == math.inf

    def config(freeness: float) -> LlumnixConfig:
        # The threshold is a load, and Llumnix's load is the negated freeness.
        return LlumnixConfig(migrate_out_threshold=-freeness)

    between = (f[1] + f[2]) / 2
    assert Llumnix(ctx, config(between)).pairs(sim) == [(0, 3), (1, 2)]
    # Only instance 0 below the threshold: it alone migrates out, to the freest instance.
    below_1 = (f[0] + f[1]) / 2
    assert Llumnix(ctx, config(below_1)).pairs(sim) == [(0, 3)]
    # Nobody below the threshold: no migration.
    assert Llumnix(ctx, config(f[0] - 0.5)).pairs(sim) == []
    # Llumnix's default (load > 3, freeness < -3): a few free blocks per request is no reason.
    assert policy.pairs(sim) == []


def test_default_threshold_migrates_out_only_below_minus_three_blocks_per_request() -> None:
    ctx = _ctx(3)  # 192 blocks of 16 tokens per instance
    policy = Llumnix(ctx)
    sim = _sim(ctx, policy)
    # Instance 0: 10 decodes of 13 blocks (130 held, 62 free) and a queued 1,000-token prompt of
    # 63 blocks: (62 - 63) / 11 = -0.09 blocks per request, so not a source by default.
    _decoding(sim, 0, [200] * 10)
    _queue(sim, 0, 1000)
    # Instance 1: the same decodes and a queued 1,500-token prompt of 94 blocks:
    # (62 - 94) / 11 = -2.9, still above -3.
    _decoding(sim, 1, [200] * 10)
    _queue(sim, 1, 1500)
    # Instance 2: the same decodes and a queued 1,600-token prompt of 100 blocks:
    # (62 - 100) / 11 = -3.45: a source, paired with the freest destination.
    _decoding(sim, 2, [200] * 10)
    _queue(sim, 2, 1600)
    free = [sim.instance(i).free_blocks() for i in range(3)]
    assert free == [62, 62, 62]  # 200 prompt + 1 token = 13 blocks each
    f = [policy.migration_freeness(sim.instance(i)) for i in range(3)]
    assert f == pytest.approx([-1 / 11, -32 / 11, -38 / 11])
    assert policy.pairs(sim) == [(2, 0)]


def test_preempted_requests_make_a_source_whatever_its_freeness() -> None:
    ctx = _ctx(2)
    policy = Llumnix(ctx, LlumnixConfig(migrate_out_threshold=1e9))
    sim = _sim(ctx, policy)
    victim = _queue(sim, 0, 100)
    victim.preemptions = 1  # a recompute waiting in the queue: Llumnix's "killed" request
    assert policy.killed(sim.instance(0)) == 1
    assert policy.pairs(sim) == [(0, 1)]


def test_moves_the_shortest_decode_and_one_at_a_time_per_instance() -> None:
    ctx = _ctx(2)
    policy = Llumnix(ctx)
    sim = _sim(ctx, policy)
    seqs = _decoding(sim, 0, [300, 200, 250, 280, 260, 240, 230, 220, 210, 270, 290])
    _queue(sim, 0, 1000)  # 63 blocks that do not fit in the 14 left: (14 - 63) / 12 < -3
    assert policy.migration_freeness(sim.instance(0)) < -3.0
    view = RecordingCluster(sim)
    policy.on_tick(view, 0.0)
    shortest = min(seqs, key=lambda s: s.spec.input_tokens)
    assert view.calls == [(shortest.request_id, 0, 1)]
    policy.on_tick(view, 0.001)  # still copying: neither instance starts another migration
    assert len(view.calls) == 1


class _AllToZero(Llumnix):
    """Llumnix's migration behind a router that overloads instance 0."""

    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int:
        return 0


def _overload(mechanism: MigrationMechanism) -> SimOutcome:
    ctx = _ctx(3, mechanism=mechanism)
    rng = random.Random(5)
    specs = [req(i, rng.randint(150, 400), rng.randint(60, 200), i * 0.001) for i in range(40)]
    return _sim(ctx, _AllToZero(ctx)).run(specs)


@pytest.mark.parametrize("mechanism", list(MigrationMechanism))
def test_an_overloaded_instance_sheds_load_to_the_others(mechanism: MigrationMechanism) -> None:
    out = _overload(mechanism)
    moved = [r for r in out.records if r.migrations]
    assert len(moved) >= 3
    assert out.migrations_by_reason == {"llumnix": sum(r.migrations for r in out.records)}
    for r in moved:
        # Out of the overloaded instance only, never back into it.
        assert r.instances[0] == 0
        assert all(i != 0 for i in r.instances[1:])
    assert all(r.finish_s is not None for r in out.records)


def test_no_migration_when_the_cluster_is_balanced() -> None:
    ctx = _ctx(4, kv_tokens=65536)
    rng = random.Random(1)
    specs = [req(i, rng.randint(50, 500), rng.randint(20, 200), i * 0.004) for i in range(120)]
    policy = Llumnix(ctx)
    out = _sim(ctx, policy).run(specs)
    assert out.migrations_by_reason == {}
    assert out.failed_migrations == 0
    assert {r.instances[0] for r in out.records} == {0, 1, 2, 3}


def test_same_inputs_same_result() -> None:
    a, b = _overload(MigrationMechanism.KV_TRANSFER), _overload(MigrationMechanism.KV_TRANSFER)
    assert a.records == b.records
    assert a.migrations_by_reason == b.migrations_by_reason


def test_registered_with_the_simulation_s_mechanism_and_llumnix_defaults() -> None:
    ctx = _ctx(2, mechanism=MigrationMechanism.REPLAY)
    policy = make_policy("llumnix", ctx)
    assert isinstance(policy, Llumnix)
    assert policy.tick_interval_s == 0.05
    assert policy.config.migrate_out_threshold == 3.0
