"""length_buckets: prompt-length ranges from the expected load, least-loaded inside a range."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import policy_context, req, tiny_profile
from l4.core.grid import exponential_grid
from l4.core.summary import summarize_lengths, summarize_requests
from l4.errors import ValidationError
from l4.instance import Sequence as Seq
from l4.policies.base import make_policy
from l4.policies.length_buckets import (
    COLD_START_SPAN_TOKENS,
    BucketPlan,
    LengthBuckets,
    LengthBucketsConfig,
    apportion,
    plan_buckets,
    quantile_bounds,
)
from l4.request import RequestSpec
from l4.sim.cluster import SimOutcome, Simulation
from l4.views import PolicyContext

GRID = exponential_grid(2048, min_tokens=16)


def _ctx(n: int, specs: list[RequestSpec] | None) -> PolicyContext:
    profile = tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048)
    return policy_context(profile, n, workload=summarize_requests(GRID, specs) if specs else None)


def _specs(seed: int = 3, n: int = 120) -> list[RequestSpec]:
    rng = random.Random(seed)
    # Half short, half long prompts: the load sits mostly in the long half.
    return [
        req(
            i,
            rng.choice([rng.randint(20, 120), rng.randint(600, 1500)]),
            rng.randint(5, 60),
            i * 0.01,
        )
        for i in range(n)
    ]


def _run(
    n: int, specs: list[RequestSpec], config: LengthBucketsConfig | None = None
) -> tuple[SimOutcome, LengthBuckets]:
    ctx = _ctx(n, specs)
    policy = LengthBuckets(ctx, config)
    sim = Simulation(
        profile=ctx.profile,
        instance_config=ctx.instance_config,
        num_instances=n,
        policy=policy,
        cost=ctx.cost,
        check_every_event=True,
    )
    return sim.run(specs), policy


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=0.0, max_value=50.0, allow_nan=False),
        min_size=1,
        max_size=GRID.num_buckets,
    ),
    st.integers(min_value=1, max_value=20),
    st.integers(min_value=1, max_value=8),
)
def test_groups_partition_the_instances_and_follow_the_load(
    counts: list[float], num_instances: int, num_buckets: int
) -> None:
    # One prompt length per grid bucket, weighted by `counts`.
    prompts = np.array(GRID.edges_tokens[: len(counts)], dtype=np.float64) + 1.0
    weights = np.array(counts)
    if not weights.sum() > 0:
        weights[0] = 1.0
    summary = summarize_lengths(
        GRID,
        input_tokens=prompts,
        output_tokens=np.full(len(prompts), 10.0),
        duration_s=10.0,
        weights=weights,
    )
    plan = plan_buckets(summary, num_instances, num_buckets)
    flat = [i for g in plan.groups for i in g]
    assert flat == list(range(num_instances))  # a partition, in range order
    assert 1 <= len(plan.groups) <= min(num_buckets, num_instances)
    # Every range holds some prompt load, and gets instances in proportion to it (within one).
    loads = np.zeros(len(plan.groups))
    for p, w in zip(prompts, weights, strict=True):
        loads[plan.bucket_of(int(p))] += p * w
    assert np.all(loads > 0)
    share = loads / loads.sum() * (num_instances - len(plan.groups)) + 1
    assert np.all(np.abs(np.array([len(g) for g in plan.groups]) - share) < 1.0 + 1e-9)


def test_boundaries_sit_at_prompt_token_quantiles() -> None:
    edges = [0, 10, 20, 30, 40]
    # Prompt-token load 1, 1, 1, 1, (nothing above 40): quartiles at 10, 20, 30.
    assert quantile_bounds(edges, [1, 1, 1, 1, 0], 4) == (10, 20, 30)
    assert quantile_bounds(edges, [1, 1, 1, 1, 0], 2) == (20,)
    # All the load in one grid bucket: no finite boundary splits it.
    assert quantile_bounds(edges, [0, 0, 5, 0, 0], 3) == ()
    assert quantile_bounds(edges, [0, 0, 0, 0, 0], 3) == ()


def test_apportion_is_proportional_with_at_least_one_each() -> None:
    assert apportion(16, [1.0, 1.0]) == (8, 8)
    assert apportion(10, [3.0, 1.0]) == (7, 3)
    assert apportion(4, [100.0, 0.0, 0.0]) == (2, 1, 1)
    with pytest.raises(ValidationError):
        apportion(2, [1.0, 1.0, 1.0])


def test_routes_by_prompt_length_to_its_range_and_balances_inside() -> None:
    specs = _specs()
    out, policy = _run(6, specs)
    plan = policy.plan
    assert len(plan.groups) == 2 and len(plan.bounds_tokens) == 1
    assert 120 < plan.bounds_tokens[0] <= 1500
    for spec, rec in zip(specs, out.records, strict=True):
        assert rec.instances == (rec.instances[0],)  # never moved
        assert rec.instances[0] in plan.groups[plan.bucket_of(spec.input_tokens)]
    used = {r.instances[0] for r in out.records}
    assert used == set(range(6))  # least-load spreads over every instance of each group
    assert out.groups == tuple(plan.groups)


def test_inside_a_range_the_least_loaded_instance_wins() -> None:
    specs = _specs()
    ctx = _ctx(4, specs)
    policy = LengthBuckets(ctx)
    sim = Simulation(
        profile=ctx.profile, instance_config=ctx.instance_config, num_instances=4, policy=policy
    )
    long_group = policy.plan.groups[1]
    first, second = long_group[0], long_group[1]
    sim.instances[first].admit(Seq(req(900, 1000, 10)))  # one queued: score 4
    long_request = req(901, 1400, 10)
    assert policy.route(long_request, sim, 0.0) == second
    for _ in range(5):  # five more queued at `second`: score 20 against 4
        sim.instances[second].admit(Seq(req(902, 1000, 10)))
    assert policy.route(long_request, sim, 0.0) == first
    assert policy.route(req(903, 30, 10), sim, 0.0) in policy.plan.groups[0]


def test_without_a_workload_the_cold_start_ranges_of_sglang() -> None:
    plan = plan_buckets(None, 16, 2)
    assert plan == BucketPlan(
        bounds_tokens=(COLD_START_SPAN_TOKENS // 2,),
        groups=(tuple(range(8)), tuple(range(8, 16))),
    )
    policy = make_policy("length_buckets", _ctx(5, None))
    assert policy.groups() == [[0, 1, 2], [3, 4]]


def test_more_buckets_than_instances_give_one_instance_each() -> None:
    plan = plan_buckets(None, 3, 8)
    assert plan.groups == ((0,), (1,), (2,))
    with pytest.raises(ValidationError):
        LengthBucketsConfig(num_buckets=0)


def test_same_inputs_same_result() -> None:
    specs = _specs(seed=9, n=60)
    a, _ = _run(4, specs, LengthBucketsConfig(num_buckets=3))
    b, _ = _run(4, specs, LengthBucketsConfig(num_buckets=3))
    assert a.records == b.records
