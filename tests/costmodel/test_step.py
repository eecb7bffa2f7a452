"""The step-time model: exact step times of a hand-made profile, worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from factories import tiny_profile
from l4.costmodel import PrefillChunk, StepCostModel
from l4.costmodel.profile import MixedAttention
from l4.errors import ValidationError

# W = n l D at the knots: (1, 100) 1e-6, (1, 1000) 1e-5, (4, 100) 8e-6, (4, 1000) 1.6e-4.
MIXED = MixedAttention(
    base_s=1e-6,
    path_s_per_token=1e-8,
    per_token_s=1e-8,
    per_token_context_s=1e-10,
    per_seq_s=1e-7,
    num_decodes=(1.0, 4.0),
    context_tokens=(100.0, 1000.0),
    decode_s_per_token=((1e-8, 1e-8), (2e-8, 4e-8)),
)


def test_decode_work_is_bilinear_inside_and_proportional_outside() -> None:
    assert MIXED.decode_work_s(1, 100) == pytest.approx(1e-6)
    assert MIXED.decode_work_s(4, 1000) == pytest.approx(1.6e-4)
    # l = 550 is half way: rows 5.5e-6 (n = 1) and 8.4e-5 (n = 4); n = 2 is a third of the way.
    assert MIXED.decode_work_s(2, 550) == pytest.approx(5.5e-6 + (8.4e-5 - 5.5e-6) / 3)
    # beyond the knots: twice the last knot on each axis is four times its work
    assert MIXED.decode_work_s(8, 2000) == pytest.approx(4 * 1.6e-4)
    assert MIXED.decode_work_s(0.5, 50) == pytest.approx(0.25 * 1e-6)
    assert MIXED.decode_work_s(0, 500) == 0.0


def test_a_table_whose_work_falls_is_refused() -> None:
    with pytest.raises(ValidationError, match="more decodes"):
        replace(MIXED, decode_s_per_token=((1e-8, 1e-8), (1e-9, 4e-8)))
    with pytest.raises(ValidationError, match="longer contexts"):
        replace(MIXED, decode_s_per_token=((1e-8, 1e-10), (2e-8, 4e-8)))


def test_a_step_with_a_chunk_runs_one_attention_kernel() -> None:
    model = StepCostModel(replace(tiny_profile(), mixed_attention=MIXED))
    # 2 decodes at 400 and 700 tokens (mean 550, max 700) + a 100-token chunk after 50.
    w_mean = 5.5e-6 + (8.4e-5 - 5.5e-6) / 3  # see above
    w_max = 7e-6 + (1.09333333e-4 - 7e-6) / 3  # rows at l = 700: 7e-6 and 8e-6 + 2/3 * 1.52e-4
    alpha = 0.9 + 0.25 * (0.1 - 0.9)  # tiny table: n = 2 is a quarter of the way in log2 n
    decodes = 2 * 1e-7 + w_mean + alpha * (w_max - w_mean)
    chunk = 1e-8 * 100 + 1e-10 * 100 * (50 + 101 / 2)
    attention = 2 * (1e-6 + max(1e-8 * 150, chunk + decodes))  # 2 layers; the work decides
    rest = 1e-3 + 1e-5 * 3 + 1e-5 * 102  # fixed, 3 sequences, linear at 102 tokens
    got = model.step_time_s(
        num_decodes=2,
        context_sum_tokens=1100,
        context_max_tokens=700,
        chunks=(PrefillChunk(tokens=100, prior_tokens=50),),
    )
    assert got == pytest.approx(rest + attention, rel=1e-6)


def test_a_short_chunk_after_a_long_prefix_costs_its_critical_path() -> None:
    model = StepCostModel(replace(tiny_profile(), mixed_attention=MIXED))
    chunk = PrefillChunk(tokens=1, prior_tokens=10_000)
    path = 1e-8 * 10_001  # one tile walking every key; the work is ~1e-6
    assert model.prefill_attention_s(chunk) == pytest.approx(2 * (1e-6 + path))
    got = model.step_time_s(
        num_decodes=0, context_sum_tokens=0, context_max_tokens=0, chunks=(chunk,)
    )
    assert got == pytest.approx(1e-3 + 1e-5 + 1e-5 + 2 * (1e-6 + path))


def test_without_a_one_kernel_fit_the_parts_are_summed() -> None:
    model = StepCostModel(tiny_profile())
    chunk = PrefillChunk(tokens=100, prior_tokens=50)
    # tiny prefill attention: base 1e-6 + 1e-7 per token + 1e-9 per pair, x 2 layers
    pre = 2 * (1e-6 + 1e-7 * 100 + 1e-9 * 100 * (50 + 101 / 2))
    assert model.prefill_attention_s(chunk) == pytest.approx(pre)
    got = model.step_time_s(
        num_decodes=2, context_sum_tokens=1100, context_max_tokens=700, chunks=(chunk,)
    )
    want = (
        1e-3
        + 1e-5 * 3
        + 1e-5 * 102
        + pre
        + model.decode_attention_s(2, 1100, 700, has_prefill=True)
    )
    assert got == pytest.approx(want)
