"""The closed-form multi-step plans must give exactly what stepping one step at a time gives."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from factories import req, tiny_profile
from l4.costmodel import StepCostModel
from l4.instance import InstanceConfig
from l4.policies import PolicyContext, make_policy
from l4.request import RequestSpec
from l4.sim.cluster import SimOutcome, Simulation


def _run(reqs: list[RequestSpec], *, max_plan_steps: int, instances: int = 1) -> SimOutcome:
    profile = tiny_profile(kv_capacity_tokens=2048, max_context_tokens=1024)
    cfg = InstanceConfig.from_profile(profile)
    ctx = PolicyContext(
        num_instances=instances,
        profile=profile,
        cost=StepCostModel(profile),
        instance_config=cfg,
        seed=0,
    )
    sim = Simulation(
        profile=profile,
        instance_config=cfg,
        num_instances=instances,
        policy=make_policy("round_robin", ctx),
        check_every_event=True,
        max_plan_steps=max_plan_steps,
    )
    return sim.run(reqs)


requests_strategy = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.5, allow_nan=False),
        st.integers(min_value=1, max_value=600),
        st.integers(min_value=1, max_value=300),
    ),
    min_size=1,
    max_size=25,
)


def _specs(raw: list[tuple[float, int, int]]) -> list[RequestSpec]:
    raw = sorted(raw, key=lambda r: r[0])
    return [req(i, p, o, t) for i, (t, p, o) in enumerate(raw)]


@settings(max_examples=60, deadline=None)
@given(requests_strategy, st.integers(min_value=1, max_value=3))
def test_closed_form_equals_step_by_step(raw: list[tuple[float, int, int]], instances: int) -> None:
    specs = _specs(raw)
    fast = _run(specs, max_plan_steps=1 << 62, instances=instances)
    slow = _run(specs, max_plan_steps=1, instances=instances)
    assert fast.preemptions == slow.preemptions
    for a, b in zip(fast.records, slow.records, strict=True):
        assert a.generated_tokens == b.generated_tokens == a.output_tokens
        assert a.first_token_s is not None and b.first_token_s is not None
        assert a.finish_s is not None and b.finish_s is not None
        assert math.isclose(a.first_token_s, b.first_token_s, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(a.finish_s, b.finish_s, rel_tol=1e-9, abs_tol=1e-12)
    fv, fw = fast.itl.samples()
    sv, sw = slow.itl.samples()
    assert int(fw.sum()) == int(sw.sum())
    assert math.isclose(float((fv * fw).sum()), float((sv * sw).sum()), rel_tol=1e-9)
    assert fast.output_tokens_by_instance == slow.output_tokens_by_instance


def test_itl_count_is_tokens_minus_first() -> None:
    specs = [req(0, 100, 50, 0.0), req(1, 300, 20, 0.01), req(2, 50, 1, 0.02)]
    out = _run(specs, max_plan_steps=1 << 62)
    _, weights = out.itl.samples()
    # Every token after a request's first closes exactly one inter-token gap.
    assert int(weights.sum()) == sum(s.output_tokens - 1 for s in specs)
