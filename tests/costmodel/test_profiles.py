"""The bundled calibration profiles: loadable, reproducible, physically sane, well fitted."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4.costmodel import PrefillChunk, Profile, StepCostModel, available_profiles, load_profile

TOOLS = Path(__file__).resolve().parents[2] / "tools"
EXPECTED = {"h100-llama-3.1-8b", "h100-llama-3.2-3b", "rtxpro6000-llama-3.1-8b"}

# Fit-error bounds (relative): tight enough to catch a broken fit, loose enough for the known limits
# of the formula (piecewise-linear table vs kernel tile steps; prefill form without a prior-only
# term, hence fitted on chunks >= 128 only).
LINEAR_MAPE, LINEAR_MAX = 0.05, 0.25
DECODE_MAPE, DECODE_P90 = 0.08, 0.15
PREFILL_MAPE, PREFILL_P90 = 0.15, 0.30
MIXED_MAPE, MIXED_P90 = 0.10, 0.25
PER_SEQ_MAPE = 0.03


def _calibrate() -> ModuleType:
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    return importlib.import_module("calibrate_profiles")


@pytest.fixture(scope="module")
def profiles() -> dict[str, Profile]:
    return {name: load_profile(name) for name in available_profiles()}


def test_all_bundled_profiles_load(profiles: dict[str, Profile]) -> None:
    assert set(profiles) >= EXPECTED
    for name, p in profiles.items():
        assert p.name == name
        assert p.kv_capacity_tokens % p.block_size_tokens == 0
        assert p.model.kv_bytes_per_token_per_layer == 4096  # both models: 8 KV heads x 128, bf16
        assert {"sources", "method", "kv_capacity_tokens", "alpha"} <= set(p.provenance)


def test_committed_profiles_match_regeneration() -> None:
    assert _calibrate().stale_files() == []


def test_check_flag_exits_zero() -> None:
    assert _calibrate().main(["--check"]) == 0


def test_alpha_within_unit_interval(profiles: dict[str, Profile]) -> None:
    for p in profiles.values():
        for value in (*p.alpha.decode_only, *p.alpha.with_prefill):
            assert 0.0 <= value <= 1.0
        # few decodes sharing a step with a prefill chunk are the worst case (README table)
        assert p.alpha(2, True) > p.alpha(128, True)


def test_kv_capacity_near_vllm_report(profiles: dict[str, Profile]) -> None:
    # vLLM reports roughly 400K tokens for Llama-3.1-8B on an 80 GB H100 at utilisation 0.9.
    assert 380_000 <= profiles["h100-llama-3.1-8b"].kv_capacity_tokens <= 460_000
    # Smaller weights and KV per token: the 3B model fits more; the 96 GB card fits more.
    assert (
        profiles["h100-llama-3.2-3b"].kv_capacity_tokens
        > profiles["h100-llama-3.1-8b"].kv_capacity_tokens
    )
    assert (
        profiles["rtxpro6000-llama-3.1-8b"].kv_capacity_tokens
        > profiles["h100-llama-3.1-8b"].kv_capacity_tokens
    )


def _err(p: Profile, key: str) -> dict[str, Any]:
    value = p.fit_error[key]
    assert isinstance(value, dict)
    return value


def test_rtx_fit_errors_within_bounds(profiles: dict[str, Profile]) -> None:
    p = profiles["rtxpro6000-llama-3.1-8b"]
    lin = _err(p, "linear_vs_dense_sums")
    assert lin["mape"] < LINEAR_MAPE and lin["max"] < LINEAR_MAX
    dec = _err(p, "decode_attention_uniform_rows")
    assert dec["mape"] < DECODE_MAPE and dec["p90"] < DECODE_P90
    pre = _err(p, "prefill_attention_chunk_ge_128_rows")
    assert pre["mape"] < PREFILL_MAPE and pre["p90"] < PREFILL_P90
    assert _err(p, "per_sequence_vs_lm_head_plus_sampler")["mape"] < PER_SEQ_MAPE
    # One attention kernel per step with a chunk: fitted to the mixed rows, far closer than
    # the sum of the prefill-only and decode-only fits (which under-predicts most of them).
    one_kernel = _err(p, "mixed_rows_one_kernel_fit")
    summed = _err(p, "mixed_rows_prefill_plus_decode_not_fitted")
    assert one_kernel["mape"] < MIXED_MAPE and one_kernel["p90"] < MIXED_P90
    assert one_kernel["mape"] < 0.3 * summed["mape"]
    assert _err(p, "prefill_only_rows_one_kernel_fit")["mape"] < PREFILL_MAPE
    skew = _err(p, "skew_t_skew")
    for regime in ("pure", "mixed"):
        # the alpha table must explain a good part of the heterogeneity error
        assert skew[regime]["alpha_table"]["mape"] < 0.7 * skew[regime]["alpha_0"]["mape"]


@pytest.mark.parametrize("name", ["h100-llama-3.1-8b", "h100-llama-3.2-3b"])
def test_h100_fit_errors_within_bounds(profiles: dict[str, Profile], name: str) -> None:
    lin = _err(profiles[name], "linear_vs_derived_vidur_sums")
    assert lin["mape"] < LINEAR_MAPE and lin["max"] < LINEAR_MAX
    dec = _err(profiles[name], "v0_decode_rows")  # the floors come from this fit
    assert dec["mape"] < 0.2


def test_h100_8b_cross_check_against_eager_v0(profiles: dict[str, Profile]) -> None:
    cross = profiles["h100-llama-3.1-8b"].provenance["cross_check_v0_eager_layers"]
    # the eager-mode v0 profile of the same model is slower (launch overheads), not wildly so
    assert 1.0 < cross["median_ratio"] < 1.6
    assert 0.7 < cross["v0_lm_head_over_derived"] < 1.3


def test_public_sanity_figures(profiles: dict[str, Profile]) -> None:
    h100 = StepCostModel(profiles["h100-llama-3.1-8b"])
    rtx = StepCostModel(profiles["rtxpro6000-llama-3.1-8b"])
    # H100 8B non-attention ~5.6 ms up to 64 tokens, ~40 ms at 2048 (Vidur 7B, README)
    assert 5.0e-3 < profiles["h100-llama-3.1-8b"].linear(64) < 7.5e-3
    assert 35e-3 < profiles["h100-llama-3.1-8b"].linear(2048) < 55e-3
    for model in (h100, rtx):
        one = model.step_time_s(num_decodes=1, context_sum_tokens=1024, context_max_tokens=1024)
        assert 5e-3 < one < 15e-3
    # the H100 has ~1.9x the bandwidth of the RTX PRO 6000: faster at every shape
    for n, ctx in ((1, 1024), (1, 32768), (256, 2048)):
        kw: dict[str, int] = {
            "num_decodes": n,
            "context_sum_tokens": n * ctx,
            "context_max_tokens": ctx,
        }
        assert h100.step_time_s(**kw) < rtx.step_time_s(**kw)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(EXPECTED)),
    num_decodes=st.integers(0, 512),
    context=st.integers(1, 131072),
    chunk=st.integers(0, 8192),
    prior=st.integers(0, 65536),
    more=st.integers(1, 4096),
)
def test_step_time_monotone_in_tokens_and_context(
    name: str, num_decodes: int, context: int, chunk: int, prior: int, more: int
) -> None:
    model = StepCostModel(load_profile(name))

    def step(n: int, ctx: int, c: int, pr: int) -> float:
        chunks = (PrefillChunk(tokens=c, prior_tokens=pr),) if c else ()
        return model.step_time_s(
            num_decodes=n, context_sum_tokens=n * ctx, context_max_tokens=ctx, chunks=chunks
        )

    base = step(num_decodes, context, chunk, prior)
    if chunk:
        assert step(num_decodes, context, chunk + more, prior) >= base
        assert step(num_decodes, context, chunk, prior + more) >= base
    if num_decodes:
        assert step(num_decodes, context + more, chunk, prior) >= base
    assert step(num_decodes + 1, context, chunk, prior) >= base
