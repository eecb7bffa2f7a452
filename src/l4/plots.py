"""PNG plots of simulator runs: latency CDFs per policy and metrics versus arrival rate.

Guarantees:

* Every function selects matplotlib's Agg backend, writes one PNG and closes its figure; it keeps
  no other state.
* A policy is drawn with the same colour, marker and line style in every plot when the policies
  come in the same order (``policy_styles``), and no two of the first 220 policies look alike.
* A log axis carries at most ``MAX_LOG_TICKS`` labelled ticks, on the 1-2-5 series or on whole
  decades (``log_ticks``), its limits widened to the outer ticks: every panel, however narrow its
  data, shows at least two labels, and labels do not overlap.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from l4.metrics import RequestRecord, SloConfig, latency_samples

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Up to this many labels fit a 4-inch panel at the default font without touching.
MAX_LOG_TICKS = 7

_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
_LINE_STYLES = ("-", "--", "-.", ":")


@dataclass(frozen=True, slots=True, kw_only=True)
class LineStyle:
    color: str
    marker: str
    linestyle: str

    def kwargs(self) -> dict[str, Any]:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle}


def policy_styles(policies: Sequence[str]) -> dict[str, LineStyle]:
    """Colour, marker and line style per policy, by position. The three cycles have coprime-ish
    lengths (10, 11, 4), so a style repeats only after lcm = 220 policies."""
    return {
        name: LineStyle(
            color=_COLOURS[i % len(_COLOURS)],
            marker=_MARKERS[i % len(_MARKERS)],
            linestyle=_LINE_STYLES[i % len(_LINE_STYLES)],
        )
        for i, name in enumerate(policies)
    }


def _series(subs: Sequence[float], every: int, lo: float, hi: float) -> list[float]:
    """The values m * 10^d (m in ``subs``, d a multiple of ``every``) from the largest one at or
    below ``lo`` to the smallest one at or above ``hi``."""
    first = math.floor(math.log10(lo)) // every * every - every
    last = math.ceil(math.log10(hi)) + every
    values = sorted(m * 10.0**d for d in range(first, last + 1, every) for m in subs)
    eps = 1e-12
    start = max(i for i, v in enumerate(values) if v <= lo * (1 + eps))
    stop = min(i for i, v in enumerate(values) if v >= hi * (1 - eps))
    return values[start : stop + 1]


def log_ticks(lo: float, hi: float, *, max_ticks: int = MAX_LOG_TICKS) -> list[float]:
    """Labelled ticks for a log axis spanning data in [lo, hi] (both > 0): the densest of the
    1-2-5 series, the 1-3 series, whole decades or every k-th decade that needs at most
    ``max_ticks`` ticks to enclose the data. The first and last ticks are the axis limits."""
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"log ticks need 0 < lo <= hi, got {lo}, {hi}")
    if hi < 1.5 * lo:
        # Data on (or next to) one tick: widen, or the axis would have a single label.
        lo, hi = lo / 1.5, hi * 1.5
    for subs in ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,)):
        ticks = _series(subs, 1, lo, hi)
        if len(ticks) <= max_ticks:
            return ticks
    every = 2
    while True:
        ticks = _series((1.0,), every, lo, hi)
        if len(ticks) <= max_ticks:
            return ticks
        every += 1


def _tick_label(x: float, _pos: object = None) -> str:
    return f"{x:g}"


def log_axis(ax: Axes, axis: str = "x") -> None:
    """Put ``ax``'s ``axis`` ("x" or "y") on a log scale with ``log_ticks`` over its data."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    index = 0 if axis == "x" else 1
    values = [
        float(v)
        for line in ax.get_lines()
        for v in np.asarray(line.get_data()[index], dtype=float)
        if math.isfinite(float(v)) and float(v) > 0
    ]
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    if values:
        # The 1% margin keeps a line that sits on a tick (e.g. everyone's TPOT equal) off the frame.
        ticks = log_ticks(min(values) / 1.01, max(values) * 1.01)
        (ax.set_xlim if axis == "x" else ax.set_ylim)(ticks[0], ticks[-1])
        target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(_tick_label))
    target.set_minor_locator(LogLocator(subs="all", numticks=100))
    target.set_minor_formatter(NullFormatter())


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)


def _figure_legend(fig: Any, axes: Sequence[Axes]) -> None:
    """One legend for the figure, outside the panels, with every line drawn in any panel."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper")


def plot_latency_cdfs(
    path: str | os.PathLike[str],
    records_by_policy: Mapping[str, Sequence[RequestRecord]],
    *,
    title: str = "Latency CDFs",
) -> None:
    """PNG with TTFT, TPOT and E2E CDFs (log x), one line per policy."""
    plt = _pyplot()
    _save(latency_cdf_figure(records_by_policy, title=title), plt, path)


def latency_cdf_figure(
    records_by_policy: Mapping[str, Sequence[RequestRecord]], *, title: str = "Latency CDFs"
) -> Any:
    """The figure ``plot_latency_cdfs`` saves (the caller closes it)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    with _closed_on_error(plt, fig):
        styles = policy_styles(list(records_by_policy))
        samples = {policy: latency_samples(r) for policy, r in records_by_policy.items()}
        for i, (ax, name) in enumerate(zip(axes, ("TTFT", "TPOT", "E2E"), strict=True)):
            for policy, latencies in samples.items():
                _plot_cdf(ax, latencies[i], policy, styles[policy])
            log_axis(ax)
            ax.set_ylim(0.0, 1.0)
            ax.set_xlabel(f"{name} (s, log scale)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(name)
            ax.grid(True, which="major", alpha=0.3)
        _figure_legend(fig, axes)
        fig.suptitle(title)
    return fig


def _plot_cdf(
    ax: Axes, values: np.ndarray[Any, np.dtype[np.float64]], label: str, style: LineStyle
) -> None:
    # Log axes cannot show 0 (a request that needed no time): leave such points out.
    x = np.sort(values[values > 0.0])
    if len(x):
        ax.plot(
            x,
            np.arange(1, len(x) + 1) / len(x),
            drawstyle="steps-post",
            markevery=0.1,  # ten markers along the line, wherever the points crowd
            markersize=5,
            label=label,
            **style.kwargs(),
        )


@contextlib.contextmanager
def _closed_on_error(plt: Any, fig: Any) -> Iterator[None]:
    """Close ``fig`` if drawing it fails, so that no figure outlives its function."""
    try:
        yield
    except BaseException:
        plt.close(fig)
        raise


@dataclass(frozen=True, slots=True, kw_only=True)
class _Panel:
    title: str
    keys: tuple[str, ...]
    log: bool  # latencies span orders of magnitude once a policy saturates
    share: bool = False  # a fraction, drawn in percent


_SWEEP_PANELS: tuple[_Panel, ...] = (
    _Panel(title="mean E2E (s)", keys=("e2e_s", "mean"), log=True),
    _Panel(title="p99 E2E (s)", keys=("e2e_s", "p99"), log=True),
    _Panel(title="mean TTFT (s)", keys=("ttft_s", "mean"), log=True),
    _Panel(title="mean TPOT (s)", keys=("tpot_s", "mean"), log=True),
    _Panel(title="goodput (req/s)", keys=("goodput_requests_per_s",), log=False),
    _Panel(title="SLO attainment (%)", keys=("slo_attainment",), log=False, share=True),
)


def _value(result: Mapping[str, object], keys: tuple[str, ...]) -> float | None:
    node: object = result
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    if isinstance(node, bool) or not isinstance(node, int | float | np.integer | np.floating):
        return None
    x = float(node)
    return x if math.isfinite(x) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepMarks:
    """The reference lines of a sweep plot: the goodput target in the SLO-attainment panel, a
    dotted vertical line per policy at its capacity (largest rate meeting the target) in the
    goodput and attainment panels, and absolute TTFT/TPOT limits in their panels."""

    goodput_target: float | None = None
    capacities: Mapping[str, float | None] = field(default_factory=dict)
    slo: SloConfig | None = None


def plot_sweep(
    path: str | os.PathLike[str],
    points: Mapping[str, Sequence[tuple[float, Mapping[str, object]]]],
    x_label: str = "rate (req/s)",
    *,
    title: str = "Rate sweep",
    marks: SweepMarks | None = None,
) -> None:
    """PNG of metrics versus rate: one panel per metric present in the results, one line per
    policy (``points[policy]`` holds (rate, result object of ``metrics.summarize``); unmeasured
    values leave a gap), with the reference lines of ``marks``."""
    plt = _pyplot()
    _save(sweep_figure(points, x_label, title=title, marks=marks), plt, path)


def sweep_figure(
    points: Mapping[str, Sequence[tuple[float, Mapping[str, object]]]],
    x_label: str = "rate (req/s)",
    *,
    title: str = "Rate sweep",
    marks: SweepMarks | None = None,
) -> Any:
    """The figure ``plot_sweep`` saves (the caller closes it)."""
    plt = _pyplot()
    marks = marks or SweepMarks()
    panels = [
        p
        for p in _SWEEP_PANELS
        if not p.share
        or any(_value(r, p.keys) is not None for series in points.values() for _, r in series)
    ]
    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(16, 4.2 * nrows), layout="constrained", squeeze=False
    )
    with _closed_on_error(plt, fig):
        axes = list(grid.flat)
        for ax in axes[len(panels) :]:
            ax.remove()
        styles = policy_styles(list(points))
        for ax, panel in zip(axes, panels, strict=False):
            _sweep_panel(ax, panel, points, styles)
            _sweep_references(ax, panel, styles, marks)
            if panel.log:
                log_axis(ax, "y")
            else:
                ax.set_ylim(bottom=0.0, top=105.0 if panel.share else None)
            ax.set_xlabel(x_label)
            ax.set_title(panel.title)
            ax.grid(True, which="major", alpha=0.3)
        if any(rate is not None for rate in marks.capacities.values()):
            # A proxy artist: the legend explains the dotted lines once, not once per policy.
            axes[0].plot([], [], color="grey", linestyle=":", label="capacity (dotted, per policy)")
        _figure_legend(fig, axes[: len(panels)])
        fig.suptitle(title)
    return fig


def _sweep_panel(
    ax: Axes,
    panel: _Panel,
    points: Mapping[str, Sequence[tuple[float, Mapping[str, object]]]],
    styles: Mapping[str, LineStyle],
) -> None:
    factor = 100.0 if panel.share else 1.0
    for policy, series in points.items():
        ordered = sorted(series, key=lambda point: point[0])
        ys = [_value(result, panel.keys) for _, result in ordered]
        ax.plot(
            [x for x, _ in ordered],
            [math.nan if y is None else y * factor for y in ys],
            label=policy,
            **styles[policy].kwargs(),
        )


def _sweep_references(
    ax: Axes, panel: _Panel, styles: Mapping[str, LineStyle], marks: SweepMarks
) -> None:
    """The lines a reader judges the panel by (``SweepMarks``)."""
    slo = marks.slo
    limits = {
        ("ttft_s", "mean"): None if slo is None else slo.ttft_s,
        ("tpot_s", "mean"): None if slo is None else slo.tpot_s,
    }
    limit = limits.get((panel.keys[0], panel.keys[-1]))
    if limit is not None:
        ax.axhline(limit, color="black", linestyle="--", linewidth=1, label="absolute SLO")
    if panel.share and marks.goodput_target is not None:
        ax.axhline(
            marks.goodput_target * 100,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"goodput target {marks.goodput_target:.0%}",
        )
    if panel.share or panel.keys == ("goodput_requests_per_s",):
        for policy, rate in marks.capacities.items():
            if rate is not None and policy in styles:
                ax.axvline(rate, color=styles[policy].color, linestyle=":", linewidth=1.5)
