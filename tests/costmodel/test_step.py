"""Exact step times of the tiny test profile, worked out by hand from its numbers.

tiny_profile(): 2 layers, 64 KV bytes per token (32 per layer); per step 1 ms fixed + 10 us per
sequence; non-attention time 10 us per token (the line through (1, 1e-5) and (1024, 1024e-5));
decode attention per layer 1 us + 0.1 us per sequence + 32 bytes per context token at 32 MB/s
(so 2 us per sequence-token over both layers); prefill attention per layer 1 us + 0.1 us per token
+ 1 ns per query-key pair; alpha 0.2 -> 0.0 (decode only) and 0.9 -> 0.1 (with a prefill chunk)
from 1 to 16 decodes, linear in log2(n): 0.1 and 0.5 at 4 decodes.
"""

from __future__ import annotations

import pytest

from factories import tiny_profile
from l4.costmodel import PrefillChunk, StepCostModel


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
