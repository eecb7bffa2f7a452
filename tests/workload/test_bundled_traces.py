"""Bundled traces: every one loads with the README's request count and plausible statistics."""

from __future__ import annotations

import time
from importlib import resources

import numpy as np
import pytest

from l4.errors import UnknownNameError
from l4.workload import WorkloadSpec, build_workload, bundled_trace, bundled_traces
from l4.workload.traces import load_bundled

# Counts and statistics from shared/sim_data/README.md.
EXPECTED = {
    "mooncake": dict(requests=12_031, input_p50=6_909, input_max=126_195, span_s=3_537.0),
    "azure-conv": dict(requests=19_366, input_p50=1_020, input_max=14_050, span_s=3_501.7),
    "sharegpt": dict(requests=30_731, input_p50=1_730, input_max=8_141, span_s=None),
    "arxiv": dict(requests=28_257, input_p50=2_730, input_max=4_054, span_s=None),
}
BIG_CONTEXT = 1 << 20


GENERATED = ("azure-longdoc", "servegen-mmid", "servegen-r1")


def test_names() -> None:
    assert bundled_traces() == sorted([*EXPECTED, *GENERATED])
    with pytest.raises(UnknownNameError):
        bundled_trace("nope")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_trace_loads_with_readme_counts(name: str) -> None:
    expected = EXPECTED[name]
    info = bundled_trace(name)
    work = build_workload(WorkloadSpec(trace=name, max_context_tokens=BIG_CONTEXT))
    summary = work.describe()
    assert work.name == name and work.source == "bundled"
    assert summary["requests"] == expected["requests"]
    assert summary["input_tokens_p50"] == expected["input_p50"]
    assert summary["input_tokens_max"] == expected["input_max"]
    assert summary["clipped_requests"] == 0
    assert work.timestamped == info.timestamped == (expected["span_s"] is not None)
    arrivals = np.array([r.arrival_s for r in work.requests])
    assert np.all(np.diff(arrivals) >= 0)
    assert [r.request_id for r in work.requests[:3]] == [0, 1, 2]
    if expected["span_s"] is not None:
        assert info.default_rate_rps is None
        assert arrivals[0] == 0.0
        assert arrivals[-1] == pytest.approx(expected["span_s"], abs=1.0)
    else:
        assert info.default_rate_rps is not None and info.default_rate_rps > 0
        assert work.mean_rate_rps == pytest.approx(info.default_rate_rps, rel=0.05)
    assert info.description


def test_mooncake_and_azure_rates_match_readme() -> None:
    for name, rate in (("mooncake", 3.4), ("azure-conv", 5.5)):
        work = build_workload(WorkloadSpec(trace=name, max_context_tokens=BIG_CONTEXT))
        assert work.mean_rate_rps == pytest.approx(rate, abs=0.05)


def test_loading_is_fast_and_cached() -> None:
    load_bundled.cache_clear()
    start = time.perf_counter()
    for name in ("mooncake", "azure-conv"):
        build_workload(WorkloadSpec(trace=name, max_context_tokens=BIG_CONTEXT))
    assert time.perf_counter() - start < 1.0
    assert load_bundled("mooncake") is load_bundled("mooncake")


def test_cached_arrays_cannot_be_modified() -> None:
    data = load_bundled("mooncake")
    with pytest.raises(ValueError):
        data.input_tokens[0] = 1


def test_licence_notes_cover_every_file() -> None:
    data = resources.files("l4.workload").joinpath("data")
    notes = data.joinpath("LICENSES.md").read_text(encoding="utf-8")
    for name in bundled_traces():
        trace = bundled_trace(name)
        if trace.kind == "mix":
            assert trace.mix is not None
            assert {trace.mix.base, trace.mix.source} <= set(EXPECTED)
            continue
        assert data.joinpath(trace.file_name).is_file()
        if trace.kind == "csv":
            assert f"`{trace.file_name}`" in notes
        else:
            assert f"`{trace.file_name}`" in notes
            assert "ServeGen" in notes and "NSDI" in notes
    for licence in ("Apache-2.0", "CC-BY-4.0", "MIT", "hash_ids"):
        assert licence in notes


def test_the_package_data_stays_small() -> None:
    data = resources.files("l4.workload").joinpath("data")
    for name in GENERATED[1:]:
        size = len(data.joinpath(bundled_trace(name).file_name).read_bytes())
        assert size < 300 * 1024


def test_long_document_mix_keeps_chat_timestamps_and_turns_a_tenth_into_documents() -> None:
    chat = build_workload(WorkloadSpec(trace="azure-conv", max_context_tokens=BIG_CONTEXT))
    mix = build_workload(WorkloadSpec(trace="azure-longdoc", max_context_tokens=BIG_CONTEXT))
    assert mix.timestamped and len(mix.requests) == len(chat.requests)
    assert [r.arrival_s for r in mix.requests] == [r.arrival_s for r in chat.requests]
    changed = [m for m, c in zip(mix.requests, chat.requests, strict=True) if m != c]
    assert all(r.input_tokens >= 16_384 for r in changed)
    assert len(changed) / len(mix.requests) == pytest.approx(0.1, abs=0.01)
    long_prompts = {int(x) for x in load_bundled("mooncake").input_tokens if x >= 16_384}
    assert {r.input_tokens for r in changed} <= long_prompts
    again = build_workload(WorkloadSpec(trace="azure-longdoc", max_context_tokens=BIG_CONTEXT))
    other = build_workload(
        WorkloadSpec(trace="azure-longdoc", max_context_tokens=BIG_CONTEXT, seed=1)
    )
    assert again.requests == mix.requests and other.requests != mix.requests
