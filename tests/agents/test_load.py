"""Load as agents bid it: a half-done long prefill counts, and loads grow with the work."""

from __future__ import annotations

import pytest

from agent_factories import FakeView, seq
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


def test_load_model_constants_by_hand() -> None:
    # tiny_profile (see tests/costmodel/test_step.py), budget 256 tokens:
    # * a query-key pair costs 2 layers x 1 ns = 2 ns (1 token after 1024 minus after 0);
    # * a full chunk from scratch: 3688.992 us, of which 256 x 257 / 2 pairs x 2 ns = 65.792 us:
    #   (3688.992 - 65.792) / 256 = 14.153125 us per prompt token;
    # * a second decode adds 1046.4 - 1024.2 = 22.2 us; a context token 2 us.
    model = _model()
    assert model.prefill_s(1.0, 0.0) == pytest.approx(14.153125e-6, rel=1e-9)
    assert model.prefill_s(0.0, 1000.0) == pytest.approx(2e-6, rel=1e-9)
    assert model.prompt_s(100) == pytest.approx(1415.3125e-6 + 5000 * 2e-9, rel=1e-9)
    assert model.decode_delta_s(500) == pytest.approx(22.2e-6 + 500 * 2e-6, rel=1e-9)


def test_load_of_a_view_is_its_next_step_and_its_pending_prefill() -> None:
    model = _model()
    view = FakeView(0)
    view.add(seq(1, 40), 40)
    view.add(seq(2, 60), 60)
    view.pending = (100, 300.0)
    load = model.of(view)  # type: ignore[arg-type]
    # Next step: 2 decodes at contexts 41 and 61 (sum 102, max 61), alpha(2) = 0.15:
    # 1000 + 2 x 10 + 2 x 10 + [2 x (1 + 2 x 0.1) + 102 x 2 + 0.15 x (2 x 61 x 2 - 204)]
    # = 1252.4 us.
    assert load.decode_s == pytest.approx(1252.4e-6, rel=1e-9)
    assert load.prefill_s == pytest.approx(100 * 14.153125e-6 + 300 * 2e-9, rel=1e-9)
    assert load.total_s == load.decode_s + load.prefill_s
