"""Plots: PNGs written, figures closed, tick labels apart, policies told apart, context shown."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from factories import random_records
from l4.metrics import ItlRecorder, RequestRecord, SloConfig, summarize
from l4.plots import (
    MAX_LOG_TICKS,
    SweepMarks,
    latency_cdf_figure,
    log_axis,
    log_ticks,
    plot_latency_cdfs,
    plot_sweep,
    policy_styles,
    sweep_figure,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def summary(records: list[RequestRecord]) -> dict[str, object]:
    return summarize(
        records,
        ItlRecorder(),
        slo=SloConfig(),
        unloaded=lambda _i, _o: (0.05, 0.01),
        output_tokens_by_group=[[1, 1]],
        migrations_by_reason={},
        preemptions=0,
        sim_wall_s=0.0,
    )


def sweep_points(policies: tuple[str, ...]) -> dict[str, list[tuple[float, dict[str, object]]]]:
    return {
        policy: [(rate, summary(random_records(seed + int(rate)))) for rate in (4.0, 1.0, 2.0)]
        for seed, policy in enumerate(policies)
    }


def test_plot_latency_cdfs_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "cdf.png"
    plot_latency_cdfs(path, {"l4": random_records(0), "rr": random_records(1), "none": []})
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_sweep_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "sweep.png"
    points = sweep_points(("l4", "rr"))
    points["empty"] = []
    plot_sweep(path, points, "rate (req/s)")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plots_close_their_figures(tmp_path: Path) -> None:
    before = len(plt.get_fignums())
    plot_latency_cdfs(tmp_path / "a.png", {"l4": random_records(0)})
    plot_sweep(tmp_path / "b.png", {"l4": [(1.0, summary(random_records(0)))]}, "rate (req/s)")
    assert len(plt.get_fignums()) == before


def test_policy_styles_differ_for_the_first_220_policies() -> None:
    names = [f"p{i}" for i in range(220)]
    styles = policy_styles(names)
    assert len({(s.color, s.marker, s.linestyle) for s in styles.values()}) == 220
    assert policy_styles(names[:3]) == {n: styles[n] for n in names[:3]}  # by position
    # neighbours differ in all three, so two lines are told apart even in grey or when one hides
    for a, b in itertools.pairwise(list(styles.values())[:12]):
        assert a.color != b.color and a.marker != b.marker and a.linestyle != b.linestyle


@pytest.mark.parametrize(
    ("lo", "hi", "ticks"),
    [
        (0.02, 0.9, [0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),  # 1-2-5 fits in 6
        (0.02, 3.5, [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]),  # 1-2-5 would need 9: 1-3
        (0.002, 800.0, [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]),  # decades
        (1e-4, 5e3, [1e-4, 1e-2, 1.0, 1e2, 1e4]),  # every second decade
        (0.3, 0.3, [0.2, 0.5]),  # one value: the 1-2-5 ticks around it
    ],
)
def test_log_ticks_by_hand(lo: float, hi: float, ticks: list[float]) -> None:
    assert log_ticks(lo, hi) == pytest.approx(ticks, rel=1e-12)


@given(
    st.floats(min_value=-9, max_value=9),
    st.floats(min_value=0, max_value=12),
)
def test_log_ticks_enclose_the_data_with_few_nice_labels(log_lo: float, log_span: float) -> None:
    lo, hi = 10.0**log_lo, 10.0 ** (log_lo + log_span)
    ticks = log_ticks(lo, hi)
    assert 2 <= len(ticks) <= MAX_LOG_TICKS
    assert ticks == sorted(set(ticks))
    assert ticks[0] <= lo * (1 + 1e-9) and ticks[-1] >= hi * (1 - 1e-9)
    for t in ticks:
        mantissa = t / 10.0 ** math.floor(math.log10(t) + 1e-9)
        assert min(abs(mantissa - m) for m in (1.0, 2.0, 3.0, 5.0)) < 1e-6


def _label_boxes(fig: Any, ax: Any) -> list[Any]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [
        label.get_window_extent(renderer)
        for label in ax.get_xticklabels()
        if label.get_visible() and label.get_text()
    ]


@pytest.mark.parametrize("span", [(0.003, 0.05), (0.002, 800.0), (1e-5, 1e5)])
def test_log_axis_labels_do_not_overlap(span: tuple[float, float]) -> None:
    # The panel size of the latency CDF figure: 16 inches for three panels.
    fig, ax = plt.subplots(figsize=(16 / 3, 4.8))
    try:
        xs = np.geomspace(*span, 50)
        ax.plot(xs, np.linspace(0, 1, 50))
        log_axis(ax)
        boxes = _label_boxes(fig, ax)
        assert len(boxes) >= 2
        for a, b in itertools.pairwise(sorted(boxes, key=lambda box: box.x0)):
            assert a.x1 < b.x0, (a, b)
    finally:
        plt.close(fig)


def test_cdf_figure_keeps_each_policy_style_in_every_panel() -> None:
    policies = {"round_robin": random_records(0), "least_load": random_records(1, max_ttft_s=20.0)}
    fig = latency_cdf_figure(policies, title="Latency CDFs: mooncake at 13.6 req/s (x4)")
    try:
        assert fig._suptitle.get_text() == "Latency CDFs: mooncake at 13.6 req/s (x4)"
        styles = policy_styles(list(policies))
        for ax in fig.axes:
            lines = {line.get_label(): line for line in ax.get_lines()}
            assert set(lines) == set(policies)
            for name, line in lines.items():
                style = styles[name]
                assert (line.get_color(), line.get_marker(), line.get_linestyle()) == (
                    style.color,
                    style.marker,
                    style.linestyle,
                )
    finally:
        plt.close(fig)


def test_sweep_figure_draws_target_capacities_and_absolute_slos() -> None:
    points = sweep_points(("round_robin", "least_load"))
    fig = sweep_figure(
        points,
        title="Capacity search: azure-conv from 5 req/s (x1)",
        marks=SweepMarks(
            goodput_target=0.9,
            capacities={"round_robin": 2.5, "least_load": None},
            slo=SloConfig(ttft_s=0.3),
        ),
    )
    try:
        axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
        assert set(axes) == {
            "mean E2E (s)",
            "p99 E2E (s)",
            "mean TTFT (s)",
            "mean TPOT (s)",
            "goodput (req/s)",
            "SLO attainment (%)",
        }
        attainment = axes["SLO attainment (%)"]
        target = [line for line in attainment.get_lines() if "target" in str(line.get_label())]
        assert [list(line.get_ydata()) for line in target] == [[90.0, 90.0]]
        colour = policy_styles(list(points))["round_robin"].color
        for title in ("SLO attainment (%)", "goodput (req/s)"):
            verticals = [
                line
                for line in axes[title].get_lines()
                if line.get_linestyle() == ":" and list(line.get_xdata()) == [2.5, 2.5]
            ]
            assert [line.get_color() for line in verticals] == [colour]
        ttft_limits = [
            line for line in axes["mean TTFT (s)"].get_lines() if line.get_label() == "absolute SLO"
        ]
        assert [list(line.get_ydata()) for line in ttft_limits] == [[0.3, 0.3]]
        assert not [
            line for line in axes["mean TPOT (s)"].get_lines() if line.get_label() == "absolute SLO"
        ]
        assert fig._suptitle.get_text().startswith("Capacity search: azure-conv")
        legend = [text.get_text() for text in fig.legends[0].get_texts()]
        assert legend[:2] == ["round_robin", "least_load"]
        assert "goodput target 90%" in legend and "capacity (dotted, per policy)" in legend
    finally:
        plt.close(fig)


def test_sweep_figure_leaves_out_attainment_when_no_result_has_it() -> None:
    # benchmarks/experiments.py passes medians of a few metrics only
    points = {"l4": [(1.0, {"e2e_s": {"mean": 1.0, "p99": 2.0}, "goodput_requests_per_s": 3.0})]}
    fig = sweep_figure(points)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert "SLO attainment (%)" not in titles and len(titles) == 5
    finally:
        plt.close(fig)
