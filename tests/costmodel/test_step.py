"""Exact step times of the tiny test profile, worked out by hand from its numbers.

tiny_profile(): 2 layers, 64 KV bytes per token (32 per layer); per step 1 ms fixed + 10 us per
sequence; non-attention time 10 us per token (the line through (1, 1e-5) and (1024, 1024e-5));
decode attention per layer 1 us + 0.1 us per sequence + 32 bytes per context token at 32 MB/s
(so 2 us per sequence-token over both layers); prefill attention per layer 1 us + 0.1 us per token
+ 1 ns per query-key pair; alpha 0.2 -> 0.0 (decode only) and 0.9 -> 0.1 (with a prefill chunk)
from 1 to 16 decodes, linear in log2(n): 0.1 and 0.5 at 4 decodes. The tiny profile has no
measured mixed-step table, so a step with a chunk sums the prefill and decode kernels; the
profiles that have one (``MixedAttention``) price it as one kernel, tested at the end.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from factories import tiny_profile
from l4.costmodel import PrefillChunk, StepCostModel
from l4.costmodel.profile import MixedAttention
from l4.errors import ValidationError


def _cost() -> StepCostModel:
    """Built inside each test, so that a mutation tool sees the tests reach the constructor."""
    return StepCostModel(tiny_profile())


def test_decode_only_step() -> None:
    # 4 decodes, contexts summing to 400, longest 160.
    # attention: 2 x (1 us + 4 x 0.1 us) = 2.8 us; mean part 400 x 2 us = 800 us;
    # max part 4 x 160 x 2 us = 1280 us; alpha(4) = 0.1: 2.8 + 800 + 0.1 x 480 = 850.8 us.
    # step: 1000 (fixed) + 4 x 10 (per seq) + 4 x 10 (tokens) + 850.8 = 1930.8 us.
    t = _cost().step_time_s(num_decodes=4, context_sum_tokens=400, context_max_tokens=160)
    assert t == pytest.approx(1930.8e-6, rel=1e-12)


def test_decode_attention_alone() -> None:
    assert _cost().decode_attention_s(4, 400, 160, False) == pytest.approx(850.8e-6, rel=1e-12)
    # With a prefill chunk in the step alpha(4) is 0.5: 2.8 + 800 + 240 = 1042.8 us.
    assert _cost().decode_attention_s(4, 400, 160, True) == pytest.approx(1042.8e-6, rel=1e-12)
    assert _cost().decode_attention_s(0, 0, 0, True) == 0.0


def test_prefill_attention_of_a_chunk() -> None:
    # 100 tokens after 50: 2 x (1 us + 100 x 0.1 us + 1 ns x 100 x (50 + 101 / 2)) = 42.1 us.
    t = _cost().prefill_attention_s(PrefillChunk(tokens=100, prior_tokens=50))
    assert t == pytest.approx(42.1e-6, rel=1e-12)


def test_mixed_step_counts_the_prefill_sequence_in_the_overhead() -> None:
    # 4 decodes (as above) + a 100-token chunk after 50: 5 sequences, 104 tokens.
    # 1000 + 5 x 10 + 104 x 10 + 42.1 (prefill attention) + 1042.8 (decode attention, alpha 0.5)
    # = 3174.9 us.
    t = _cost().step_time_s(
        num_decodes=4,
        context_sum_tokens=400,
        context_max_tokens=160,
        chunks=(PrefillChunk(tokens=100, prior_tokens=50),),
    )
    assert t == pytest.approx(3174.9e-6, rel=1e-12)


def test_prefill_only_step_and_empty_step() -> None:
    # One 256-token chunk from scratch: 1000 + 10 + 2560 + 2 x (1 + 25.6 + 0.001 x 256 x 128.5)
    # = 3570 + 118.992 = 3688.992 us.
    chunk = PrefillChunk(tokens=256, prior_tokens=0)
    t = _cost().step_time_s(
        num_decodes=0, context_sum_tokens=0, context_max_tokens=0, chunks=(chunk,)
    )
    assert t == pytest.approx(3688.992e-6, rel=1e-12)
    assert _cost().step_time_s(num_decodes=0, context_sum_tokens=0, context_max_tokens=0) == 0.0


def test_two_chunks_in_one_step() -> None:
    # Two chunks, 10 tokens each from scratch: per chunk 2 x (1 + 1 + 0.001 x 10 x 5.5) = 4.11 us;
    # 1000 + 2 x 10 + 20 x 10 + 2 x 4.11 = 1228.22 us.
    chunks = (PrefillChunk(tokens=10, prior_tokens=0),) * 2
    t = _cost().step_time_s(
        num_decodes=0, context_sum_tokens=0, context_max_tokens=0, chunks=chunks
    )
    assert t == pytest.approx(1228.22e-6, rel=1e-12)


def test_unloaded_latency_of_a_request_alone() -> None:
    # 300-token prompt, budget 256: chunks 256 (from 0) and 44 (after 256).
    # TTFT = 3688.992 + [1000 + 10 + 440 + 2 x (1 + 4.4 + 0.001 x 44 x 278.5)] = 3688.992 + 1485.308
    # = 5174.3 us.
    # Decode steps attend contexts 301..304 (output 5: tokens 2..5 after the prefill's token), one
    # sequence, alpha's term vanishing: 1000 + 10 + 10 + 2 x (1 + 0.1) + 2 x L  us; mean of L = 301
    # and L = 304: 1022.2 + 605 = 1627.2 us.
    ttft, tpot = _cost().unloaded_latency_s(300, 5, 256)
    assert ttft == pytest.approx(5174.3e-6, rel=1e-12)
    assert tpot == pytest.approx(1627.2e-6, rel=1e-12)


def test_unloaded_latency_edge_cases() -> None:
    # One output token: no decode step. Two: one decode step at context 301.
    ttft, tpot = _cost().unloaded_latency_s(300, 1, 256)
    assert ttft == pytest.approx(5174.3e-6, rel=1e-12) and tpot == 0.0
    _, tpot = _cost().unloaded_latency_s(300, 2, 256)
    assert tpot == pytest.approx((1022.2 + 602) * 1e-6, rel=1e-12)
    # A prompt within the budget is one chunk: 1000 + 10 + 10 x 100 + 2 x (1 + 10 + 0.001 x 100 x
    # 50.5) = 2010 + 2 x 16.05 = 2042.1 us.
    ttft, _ = _cost().unloaded_latency_s(100, 2, 256)
    assert ttft == pytest.approx(2042.1e-6, rel=1e-12)


def test_the_model_keeps_its_profile() -> None:
    profile = tiny_profile()
    assert StepCostModel(profile).profile is profile


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
