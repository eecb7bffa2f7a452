"""ServeGen workloads: per-client generation, rate normalisation, time of day, determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from l4.errors import ValidationError, WorkloadError
from l4.workload import WorkloadSpec, build_workload
from l4.workload.servegen import (
    generate_servegen,
    load_servegen,
    native_rate_rps,
    parse_servegen,
)

BIG = 1 << 20
LEVELS = [0.0, 0.5, 1.0]


def _doc(clients: list[dict[str, object]]) -> str:
    return json.dumps(
        {
            "format": "l4-servegen-1",
            "name": "servegen-test",
            "window_s": 600,
            "day_s": 86_400,
            "levels": LEVELS,
            "clients": clients,
        }
    )


def _client(
    cid: int, windows: list[list[float]], datasets: list[list[object]]
) -> dict[str, object]:
    return {"client": cid, "windows": windows, "datasets": datasets}


# Client 1: 2 req/s from 0 to 600 s, Gamma shape 1 (Poisson); 4 req/s from 600 s, Weibull shape 1
# (also exponential). Lengths: inputs uniform on [100, 300], outputs exactly 50 until 21,600 s.
# Client 2: 1 req/s at 85,800 s (the day's last window), inputs exactly 1000.
DATA = parse_servegen(
    _doc(
        [
            _client(
                1,
                [[0, 2.0, 1.0, 0, 1.0, 0.5], [600, 4.0, 1.0, 1, 1.0, 0.25]],
                [[0, {"input": [100, 200, 300], "output": [50, 50, 50]}]],
            ),
            _client(
                2,
                [[85_800, 1.0, 1.0, 0, 1.0, 1.0]],
                [[0, {"input": [1000, 1000, 1000], "output": [7, 7, 7]}]],
            ),
        ]
    ),
    "test",
)


def test_native_rate_is_the_time_weighted_sum_of_the_clients_rates() -> None:
    assert native_rate_rps(DATA, 0.0, 600.0) == 2.0
    assert native_rate_rps(DATA, 300.0, 600.0) == pytest.approx((2.0 * 300 + 4.0 * 300) / 600)
    # Across midnight: client 2's last window, then client 1's first.
    assert native_rate_rps(DATA, 85_800.0, 1200.0) == pytest.approx((1.0 * 600 + 2.0 * 600) / 1200)
    with pytest.raises(ValidationError):
        native_rate_rps(DATA, 0.0, 0.0)


def test_generation_follows_rates_and_lengths() -> None:
    t, i, o = generate_servegen(DATA, start_s=0.0, duration_s=1200.0, rate_factor=10.0, seed=3)
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 1200
    first = t < 600
    # Poisson counts: 20 req/s then 40 req/s over 600 s, within 5 standard deviations.
    assert abs(first.sum() - 12_000) < 5 * math.sqrt(12_000)
    assert abs((~first).sum() - 24_000) < 5 * math.sqrt(24_000)
    assert i.min() >= 100 and i.max() <= 300 and abs(i.mean() - 200) < 2
    assert set(o.tolist()) == {50}


def test_the_span_wraps_at_midnight_and_keeps_offsets_from_its_start() -> None:
    t, i, _ = generate_servegen(DATA, start_s=85_800.0, duration_s=1200.0, rate_factor=1.0, seed=1)
    late, early = t < 600, t >= 600
    assert set(i[late].tolist()) == {1000}  # client 2 in the last window of the day
    assert i[early].max() <= 300  # client 1 at 00:00 of the next day


def test_same_seed_same_workload_other_seed_other_draws() -> None:
    a = generate_servegen(DATA, start_s=0.0, duration_s=600.0, rate_factor=1.0, seed=5)
    b = generate_servegen(DATA, start_s=0.0, duration_s=600.0, rate_factor=1.0, seed=5)
    c = generate_servegen(DATA, start_s=0.0, duration_s=600.0, rate_factor=1.0, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_malformed_files_are_reported() -> None:
    with pytest.raises(WorkloadError, match="not a ServeGen"):
        parse_servegen("{}", "x")
    bad = _doc([_client(1, [[0, 1.0, 1.0, 0, 1.0, 1.0]], [[0, {"input": [1], "output": [1]}]])])
    with pytest.raises(WorkloadError, match="levels"):
        parse_servegen(bad, "x")


@pytest.mark.parametrize("name", ["servegen-r1", "servegen-mmid"])
def test_bundled_servegen_workloads(name: str) -> None:
    spec = WorkloadSpec(trace=name, max_context_tokens=BIG, duration_s=600.0, seed=0)
    work = build_workload(spec)
    assert work.name == name and not work.timestamped
    # The mean rate is the trace's default (2 or 8 req/s) over the span, up to burstiness.
    default = 2.0 if name == "servegen-r1" else 8.0
    assert work.mean_rate_rps == pytest.approx(default, rel=0.5)
    assert build_workload(spec).requests == work.requests
    other_hour = build_workload(
        WorkloadSpec(trace=name, max_context_tokens=BIG, duration_s=600.0, seed=0, offset_s=50_400)
    )
    assert other_hour.requests != work.requests
    scaled = build_workload(
        WorkloadSpec(trace=name, max_context_tokens=BIG, duration_s=600.0, seed=0, rate_scale=4.0)
    )
    assert scaled.mean_rate_rps > 2 * work.mean_rate_rps
    counted = build_workload(WorkloadSpec(trace=name, max_context_tokens=BIG, num_requests=300))
    assert len(counted.requests) == 300


def test_reasoning_outputs_are_long_and_bimodal() -> None:
    data = load_servegen("servegen-r1.json.gz")
    _, _, o = generate_servegen(data, start_s=0.0, duration_s=3600.0, rate_factor=1.0, seed=0)
    assert np.median(o) > 300 and np.percentile(o, 99) > 10_000


def test_burstiness_is_refused_and_idle_spans_explained() -> None:
    with pytest.raises(ValidationError, match="burstiness"):
        build_workload(WorkloadSpec(trace="servegen-r1", max_context_tokens=BIG, burstiness=0.5))
