"""Load as agents bid it: a half-done long prefill counts, and loads grow with the work."""

from __future__ import annotations

from factories import make_instance, req, tiny_profile
from l4.agents.load import LoadModel
from l4.costmodel import StepCostModel
from l4.instance import Sequence


def _model() -> LoadModel:
    return LoadModel(StepCostModel(tiny_profile()), budget_tokens=256)


def test_an_unfinished_prefill_is_load_even_with_an_empty_queue() -> None:
    model = _model()
    inst = make_instance(tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048))
    inst.admit(Sequence(req(0, 2000, 10)))
    queued = model.of(inst)
    plan = inst.plan(0.0, max_steps=1)  # one 256-token chunk of the 2000-token prompt
    assert plan is not None
    inst.complete(plan.end_s)
    assert inst.num_waiting == 0
    half = model.of(inst)
    assert 0 < half.prefill_s < queued.prefill_s
    assert half.decode_s == 0.0


def test_prefill_load_is_superlinear_in_the_prompt_and_decode_load_grows_with_length() -> None:
    model = _model()
    assert model.prompt_s(2000) > 2 * model.prompt_s(1000) > 0
    assert model.decode_delta_s(4000) > model.decode_delta_s(100) > 0
    inst = make_instance(tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048))
    assert model.of(inst).total_s == 0.0
    inst.admit(Sequence(req(0, 100, 10)))
    inst.admit(Sequence(req(1, 300, 10)))
    tokens, pairs = inst.pending_prefill()
    assert tokens == 400 and pairs == (100 * 100 + 300 * 300) / 2
