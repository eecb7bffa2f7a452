"""build_workload: rates, cuts, clipping, validation and determinism end to end."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4.errors import ValidationError
from l4.workload import Workload, WorkloadSpec, build_workload
from l4.workload.formats import TraceData
from l4.workload.workload import workload_from_trace

BIG = 1 << 20


def build(trace: str, **options: Any) -> Workload:
    options.setdefault("max_context_tokens", BIG)
    return build_workload(WorkloadSpec(trace=trace, **options))


def arrivals(work: Workload) -> np.ndarray:
    return np.array([r.arrival_s for r in work.requests])


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"rate_rps": -1.0}, "--rate must be a finite number > 0, got -1.0"),
        ({"rate_rps": 0}, "--rate "),
        ({"rate_rps": float("nan")}, "--rate "),
        ({"rate_rps": float("inf")}, "--rate "),
        ({"rate_scale": 0.0}, "--rate-scale "),
        ({"duration_s": -5.0}, "--duration "),
        ({"burstiness": 0.0}, "--burstiness "),
        ({"num_requests": 0}, "--num-requests must be an integer >= 1, got 0"),
        ({"num_requests": True}, "--num-requests "),
        ({"seed": -1}, "--seed "),
        ({"offset_s": -1.0}, "--offset "),
        ({"offset_s": float("nan")}, "--offset "),
        ({"max_context_tokens": 1}, "max_context_tokens "),
        ({"trace": ""}, "--trace "),
    ],
)
def test_spec_validation(options: dict[str, Any], flag: str) -> None:
    fields: dict[str, Any] = {"trace": "sharegpt", "max_context_tokens": 4096} | options
    with pytest.raises(ValidationError) as info:
        WorkloadSpec(**fields)
    assert flag in str(info.value)


def test_timestamped_trace_rescaled_to_rate() -> None:
    native = build("mooncake")
    work = build("mooncake", rate_rps=10.0)
    assert work.mean_rate_rps == pytest.approx(10.0)
    assert arrivals(work)[-1] == pytest.approx(len(work.requests) / 10.0)
    # The pattern is kept: gaps scale by one factor.
    factor = arrivals(work)[-1] / arrivals(native)[-1]
    assert np.allclose(arrivals(work), arrivals(native) * factor)
    assert [r.input_tokens for r in work.requests] == [r.input_tokens for r in native.requests]


def test_rate_scale_multiplies_own_or_given_rate() -> None:
    native = build("azure-conv")
    assert build("azure-conv", rate_scale=2.0).mean_rate_rps == pytest.approx(
        2 * native.mean_rate_rps
    )
    assert build("azure-conv", rate_rps=4.0, rate_scale=0.5).mean_rate_rps == pytest.approx(2.0)


def test_untimed_trace_rates() -> None:
    default = build("sharegpt", num_requests=20_000)
    assert default.mean_rate_rps == pytest.approx(8.0, rel=0.03)
    scaled = build("arxiv", rate_scale=2.5, num_requests=20_000)
    assert scaled.mean_rate_rps == pytest.approx(10.0, rel=0.03)
    given_rate = build("sharegpt", rate_rps=3.0, rate_scale=2.0, num_requests=20_000)
    assert given_rate.mean_rate_rps == pytest.approx(6.0, rel=0.03)
    assert not given_rate.timestamped and arrivals(given_rate)[0] > 0


def test_burstiness_raises_cv_on_untimed_trace() -> None:
    def cv(work: Workload) -> float:
        gaps = np.diff(arrivals(work))
        return float(gaps.std() / gaps.mean())

    poisson = build("sharegpt", num_requests=20_000)
    bursty = build("sharegpt", num_requests=20_000, burstiness=0.25)
    assert cv(poisson) == pytest.approx(1.0, abs=0.05)
    assert cv(bursty) == pytest.approx(2.0, rel=0.1)


def test_burstiness_rejected_for_timestamped_trace() -> None:
    with pytest.raises(ValidationError, match="--burstiness"):
        build("mooncake", burstiness=0.5)


def test_offset_rejected_for_untimed_trace() -> None:
    with pytest.raises(ValidationError, match="--offset"):
        build("sharegpt", offset_s=10.0)


def test_offset_replays_a_later_window_of_the_trace() -> None:
    native = build("mooncake")
    later = build("mooncake", offset_s=1000.0, duration_s=300.0)
    t = arrivals(native)
    # The window opens at the first arrival from 1000 s on, which becomes t = 0.
    t0 = t[t >= 1000.0][0]
    inside = (t >= t0) & (t < t0 + 300.0)
    window = [r for r, keep in zip(native.requests, inside, strict=True) if keep]
    assert [(r.input_tokens, r.output_tokens) for r in later.requests] == [
        (r.input_tokens, r.output_tokens) for r in window
    ]
    assert arrivals(later)[0] == 0.0
    assert np.allclose(arrivals(later), t[inside] - t0)
    # Every request once past the end: the window wraps to the trace's beginning.
    wrapped = build("mooncake", offset_s=3000.0)
    assert len(wrapped.requests) == len(native.requests)
    assert sorted((r.input_tokens, r.output_tokens) for r in wrapped.requests) == sorted(
        (r.input_tokens, r.output_tokens) for r in native.requests
    )


def test_cut_by_duration_after_rescaling_and_by_count() -> None:
    work = build("mooncake", rate_scale=2.0, duration_s=600.0)
    times = arrivals(work)
    assert times[-1] < 600.0
    # Twice the speed: the first 600 s hold what the trace has in its first 1200 s.
    native = arrivals(build("mooncake"))
    assert len(work.requests) == int(np.count_nonzero(native < 1200.0))
    first = build("mooncake", num_requests=100)
    assert [r.request_id for r in first.requests] == list(range(100))
    assert first.requests == build("mooncake").requests[:100]
    both = build("azure-conv", duration_s=60.0, num_requests=5)
    assert len(both.requests) == 5


def test_cut_to_nothing_is_an_error() -> None:
    with pytest.raises(ValidationError, match="keeps no request"):
        build("sharegpt", duration_s=1e-9)


def test_clipping_counts_requests() -> None:
    work = build("mooncake", max_context_tokens=32_768)
    assert all(r.input_tokens + r.output_tokens <= 32_768 for r in work.requests)
    assert all(r.input_tokens >= 1 and r.output_tokens >= 1 for r in work.requests)
    # README: 828 prompts above 32K; a few more only overflow with their outputs.
    assert 828 <= work.clipped_requests <= 900
    assert work.describe()["input_tokens_max"] == 32_767
    assert build("mooncake").clipped_requests == 0


def test_determinism() -> None:
    spec = WorkloadSpec(trace="sharegpt", max_context_tokens=4096, seed=3, burstiness=0.5)
    assert build_workload(spec) == build_workload(spec)
    other = build_workload(
        WorkloadSpec(trace="sharegpt", max_context_tokens=4096, seed=4, burstiness=0.5)
    )
    assert arrivals(other).tolist() != arrivals(build_workload(spec)).tolist()


def test_describe_is_json_ready() -> None:
    summary = build("azure-conv", num_requests=1000).describe()
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text)["requests"] == 1000
    for key in ("mean", "p50", "p99", "max"):
        assert f"input_tokens_{key}" in summary and f"output_tokens_{key}" in summary
    assert summary["timestamped"] is True and summary["duration_s"] > 0
    assert "RequestSpec" not in repr(build("sharegpt", num_requests=3))


def test_all_arrivals_at_one_instant() -> None:
    data = TraceData(
        arrival_s=np.zeros(3),
        input_tokens=np.ones(3, dtype=np.int64),
        output_tokens=np.ones(3, dtype=np.int64),
    )
    spec = WorkloadSpec(trace="x.jsonl", max_context_tokens=10)
    work = workload_from_trace(data, spec, name="x", source="x.jsonl", default_rate_rps=None)
    assert work.mean_rate_rps == 0.0 and len(work.requests) == 3
    with pytest.raises(ValidationError, match="same time"):
        workload_from_trace(
            data,
            WorkloadSpec(trace="x.jsonl", max_context_tokens=10, rate_rps=1.0),
            name="x",
            source="x.jsonl",
            default_rate_rps=None,
        )


@st.composite
def traces(draw: st.DrawFn) -> TraceData:
    n = draw(st.integers(min_value=1, max_value=60))
    timed = draw(st.booleans())
    times = draw(st.lists(st.floats(0, 1e3), min_size=n, max_size=n)) if timed else None
    lengths = st.lists(st.integers(1, 5000), min_size=n, max_size=n)
    return TraceData(
        arrival_s=np.array(sorted(times)) if times is not None else None,
        input_tokens=np.array(draw(lengths), dtype=np.int64),
        output_tokens=np.array(draw(lengths), dtype=np.int64),
    )


@settings(max_examples=200, deadline=None)
@given(
    data=traces(),
    duration=st.none() | st.floats(1e-3, 2e3),
    count=st.none() | st.integers(1, 80),
    scale=st.none() | st.floats(0.1, 10),
    context=st.integers(2, 6000),
)
def test_cutting_never_reorders_or_overshoots(
    data: TraceData, duration: float | None, count: int | None, scale: float | None, context: int
) -> None:
    spec = WorkloadSpec(
        trace="t.jsonl",
        max_context_tokens=context,
        rate_rps=None if data.arrival_s is not None else 2.0,
        rate_scale=scale,
        duration_s=duration,
        num_requests=count,
    )
    full = workload_from_trace(
        data,
        WorkloadSpec(
            trace="t.jsonl", max_context_tokens=context, rate_rps=spec.rate_rps, rate_scale=scale
        ),
        name="t",
        source="t.jsonl",
        default_rate_rps=None,
    )
    try:
        work = workload_from_trace(data, spec, name="t", source="t.jsonl", default_rate_rps=None)
    except ValidationError:
        assert duration is not None and arrivals(full)[0] >= duration
        return
    times = arrivals(work)
    assert np.all(np.diff(times) >= 0)
    assert [r.request_id for r in work.requests] == list(range(len(work.requests)))
    # Cutting keeps a prefix of the uncut workload, in order.
    assert work.requests == full.requests[: len(work.requests)]
    if duration is not None:
        assert np.all(times < duration)
    if count is not None:
        assert len(work.requests) <= count
    assert all(
        r.output_tokens >= 1 and r.input_tokens + r.output_tokens <= context for r in work.requests
    )
