"""pd_disagg: prefill pool, hand-off of decoding requests by the run's migration mechanism."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from factories import RecordingCluster, policy_context, req, tiny_profile
from l4.core.grid import exponential_grid
from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.core.summary import summarize_lengths
from l4.errors import UnknownNameError, ValidationError
from l4.instance import SeqState
from l4.instance import Sequence as Seq
from l4.policies.base import make_policy, parse_policy_list
from l4.policies.pd_disagg import PdConfig, PdDisagg, default_num_prefill, phase_gpu_time
from l4.sim.cluster import Simulation
from l4.views import ClusterView, PolicyContext

_ids = iter(range(1000, 10**6))


def _ctx(
    n: int, mechanism: MigrationMechanism = MigrationMechanism.KV_TRANSFER, **kw: Any
) -> PolicyContext:
    profile = tiny_profile(kv_capacity_tokens=3072, max_context_tokens=2048)
    return policy_context(profile, n, migration=MigrationConfig(mechanism=mechanism), **kw)


def _sim(ctx: PolicyContext, policy: PdDisagg, *, check: bool = True) -> Simulation:
    return Simulation(
        profile=ctx.profile,
        instance_config=ctx.instance_config,
        num_instances=ctx.num_instances,
        policy=policy,
        migration=ctx.migration,
        cost=ctx.cost,
        check_every_event=check,
    )


def _decode(sim: Simulation, i: int, prompts: list[int]) -> list[Seq]:
    seqs = [Seq(req(next(_ids), p, 500)) for p in prompts]
    inst, now = sim.instances[i], 0.0
    for s in seqs:
        inst.admit(s)
    while any(s.state is not SeqState.DECODE for s in seqs):
        plan = inst.plan(now, max_steps=1)
        assert plan is not None
        now = plan.end_s
        inst.complete(now)
    return seqs


def test_arrivals_go_to_the_prefill_pool_only() -> None:
    ctx = _ctx(4)
    policy = PdDisagg(ctx, PdConfig(num_prefill=2))
    sim = _sim(ctx, policy)
    sim.instances[0].admit(Seq(req(next(_ids), 500, 10)))  # instance 0 has 500 to prefill
    # Instances 2 and 3 are idle but decode-only: the arrival goes to prefill instance 1.
    assert policy.route(req(0, 100, 10), sim, 0.0) == 1
    assert policy.groups() == [[0, 1], [2, 3]]


def test_decoding_requests_move_to_the_decode_instance_with_most_room() -> None:
    ctx = _ctx(4)
    policy = PdDisagg(ctx, PdConfig(num_prefill=2))
    sim = _sim(ctx, policy)
    a, b = _decode(sim, 0, [300, 200])
    _decode(sim, 2, [1000])  # decode instance 2 holds 63 blocks, instance 3 none
    view = RecordingCluster(sim)
    policy.on_tick(view, 0.0)
    # Both go to instance 3 (192 free, then 192 - 35 after the first hand-off, still > 129).
    assert view.calls == [(a.request_id, 0, 3), (b.request_id, 0, 3)]
    policy.on_tick(view, 0.01)  # still copying: not asked again
    assert len(view.calls) == 2


def test_a_full_decode_pool_leaves_the_request_where_it_is() -> None:
    ctx = _ctx(2)
    policy = PdDisagg(ctx, PdConfig(num_prefill=1))
    sim = _sim(ctx, policy)
    _decode(sim, 1, [1400, 1400])  # 16 blocks free: less than a context + 256 tokens of headroom
    _decode(sim, 0, [300])
    view = RecordingCluster(sim)
    policy.on_tick(view, 0.0)
    assert view.calls == []


@pytest.mark.parametrize("mechanism", list(MigrationMechanism))
def test_every_request_is_prefilled_in_one_pool_and_decoded_in_the_other(
    mechanism: MigrationMechanism,
) -> None:
    ctx = _ctx(4, mechanism)
    rng = random.Random(3)
    specs = [req(i, rng.randint(20, 900), rng.randint(30, 200), i * 0.01) for i in range(60)]
    out = _sim(ctx, PdDisagg(ctx, PdConfig(num_prefill=2))).run(specs)
    assert all(r.finish_s is not None for r in out.records)
    for r in out.records:
        assert r.instances[0] in (0, 1)
        assert all(i in (2, 3) for i in r.instances[1:])
    moved = sum(1 for r in out.records if r.migrations)
    # Every request that still decodes at a tick after its prefill moves; with replay the move
    # waits for the source's next step, and a few short ones finish first.
    assert moved >= 45
    assert out.migrations_by_reason == {"pd_handoff": moved}


def test_split_option_and_its_errors() -> None:
    ctx = _ctx(4)
    policy = make_policy("pd_disagg:3", ctx)
    assert isinstance(policy, PdDisagg) and policy.num_prefill == 3
    assert parse_policy_list("least_load,pd_disagg:3") == ["least_load", "pd_disagg:3"]
    for bad in ("pd_disagg:0", "pd_disagg:4", "pd_disagg:two"):
        with pytest.raises(ValidationError):
            make_policy(bad, ctx)
    with pytest.raises(UnknownNameError):
        parse_policy_list("least_load:3")
    with pytest.raises(ValidationError):
        make_policy("pd_disagg", _ctx(1))


def _summary(prompts: list[int], outputs: list[int]) -> object:
    grid = exponential_grid(2048)
    return summarize_lengths(
        grid,
        input_tokens=np.array(prompts),
        output_tokens=np.array(outputs),
        duration_s=10.0,
    )


def test_default_split_follows_the_phases_gpu_time() -> None:
    n = 8
    # No decode at all: every instance but one prefills.
    ctx = _ctx(n, workload=_summary([1500] * 50, [0] * 50))
    assert phase_gpu_time(ctx, ctx.workload)[1] == 0.0  # type: ignore[arg-type]
    assert default_num_prefill(ctx) == n - 1
    # Tiny prompts, long outputs: one prefill instance.
    ctx = _ctx(n, workload=_summary([10] * 50, [1500] * 50))
    assert default_num_prefill(ctx) == 1
    # Without a workload: half and half.
    assert default_num_prefill(_ctx(n)) == n // 2
    # In between, the split grows with the prompts' share of the work.
    shares = [
        default_num_prefill(_ctx(n, workload=_summary([p] * 50, [3] * 50)))
        for p in (50, 200, 800, 1600)
    ]
    assert shares == sorted(shares) and shares[0] < shares[-1]


def test_prefill_gpu_time_is_the_chunked_prompts_work() -> None:
    ctx = _ctx(4, workload=_summary([512] * 20, [1] * 20))
    w_p, _ = phase_gpu_time(ctx, ctx.workload)  # type: ignore[arg-type]
    # Per second: 2 prompts of 512 tokens, 2 chunks each at the 256-token budget. The tiny
    # profile: linear 1e-5 s per token (1e-5 at 1 token: no fixed part to remove), attention per
    # layer 1e-6 per chunk, 1e-7 per token, 1e-9 per causal pair; 2 layers.
    per_token = (256e-5 - 1e-5) / 255 + 2 * 1e-7
    pairs = 2 * 1e-9 * (512 * 512 + 512) / 2
    expected = 2 * (512 * per_token + pairs) + 2 * 1e-6 * (2 + 2 * 512 / 256)
    assert w_p == pytest.approx(expected, rel=1e-9)


def test_route_signature_matches_the_cluster_view() -> None:
    ctx = _ctx(2)
    policy: PdDisagg = make_policy("pd_disagg", ctx)  # type: ignore[assignment]
    view: ClusterView = _sim(ctx, policy)
    assert policy.route(req(0, 10, 10), view, 0.0) == 0
