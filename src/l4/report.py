"""Reports of simulator runs: a terminal table, JSON, per-request JSONL and PNG plots.

Guarantees:

* The table's caption always states trace, rate, instances, profile, alpha, seed and duration
  (EVALUATION.md's honesty rule): ``render_table`` refuses a config that lacks one of them.
* ``write_json`` and ``write_requests_jsonl`` are deterministic: the same input gives the same
  bytes. JSON is strict (NaN or infinity is refused), floats are written as Python's ``repr``.
* Plot functions select matplotlib's Agg backend, write one PNG and close their figure; they keep
  no other state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from l4.errors import ValidationError
from l4.metrics import LENGTH_CLASSES, MIN_CLASS_REQUESTS, RequestRecord, latency_samples

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# The run description every result table must carry, in caption order.
CAPTION_KEYS: tuple[str, ...] = (
    "trace",
    "rate",
    "instances",
    "profile",
    "alpha",
    "seed",
    "duration",
)

_NOTHING = "—"


def _lookup(result: Mapping[str, object], *keys: str) -> object:
    """``result[k1][k2]...``, or None when a level is missing or not a mapping."""
    node: object = result
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def format_seconds(value: object) -> str:
    """A duration with 3 significant digits: ``12.3 ms``, ``1.23 s``; a dash when unmeasured."""
    x = _number(value)
    if x is None:
        return _NOTHING
    if abs(x) < 1.0:
        ms = x * 1e3
        return (
            f"{ms:.2f} ms" if abs(ms) < 10 else f"{ms:.1f} ms" if abs(ms) < 100 else f"{ms:.0f} ms"
        )
    return f"{x:.2f} s" if abs(x) < 10 else f"{x:.1f} s" if abs(x) < 100 else f"{x:.0f} s"


def _format_fixed(value: object, digits: int) -> str:
    x = _number(value)
    return _NOTHING if x is None else f"{x:.{digits}f}"


def _format_goodput(result: Mapping[str, object]) -> str:
    rate = _format_fixed(_lookup(result, "goodput_requests_per_s"), 2)
    share = _number(_lookup(result, "slo_attainment"))
    return rate if share is None else f"{rate} ({share:.0%})"


def table_caption(config: Mapping[str, object]) -> str:
    """``trace=... rate=... ...``: the required keys first, then any others in sorted order."""
    missing = [key for key in CAPTION_KEYS if key not in config]
    if missing:
        raise ValidationError(f"result table needs {', '.join(missing)} in its config")
    extra = sorted(key for key in config if key not in CAPTION_KEYS)
    return "  ".join(f"{key}={config[key]}" for key in (*CAPTION_KEYS, *extra))


def render_table(
    results: Mapping[str, Mapping[str, object]],
    config: Mapping[str, object],
    *,
    title: str = "L4 simulation",
) -> Table:
    """One row per policy (in the mapping's order) of the objects ``metrics.summarize`` returns."""
    table = Table(title=title, caption=table_caption(config), caption_justify="left")
    table.add_column("policy", style="bold")
    for header in (
        "done/unfin",
        "TTFT mean",
        "TTFT p99",
        "TPOT mean",
        "ITL p99",
        "E2E mean",
        "E2E p99",
        "req/s",
        "goodput (SLO%)",
        "migr",
        "preempt",
        "CV",
    ):
        table.add_column(header, justify="right")
    for policy, r in results.items():
        table.add_row(
            policy,
            f"{_lookup(r, 'completed')}/{_lookup(r, 'unfinished')}",
            format_seconds(_lookup(r, "ttft_s", "mean")),
            format_seconds(_lookup(r, "ttft_s", "p99")),
            format_seconds(_lookup(r, "tpot_s", "mean")),
            format_seconds(_lookup(r, "itl_s", "p99")),
            format_seconds(_lookup(r, "e2e_s", "mean")),
            format_seconds(_lookup(r, "e2e_s", "p99")),
            _format_fixed(_lookup(r, "throughput", "requests_per_s"), 2),
            _format_goodput(r),
            str(_lookup(r, "migrations")),
            str(_lookup(r, "preemptions")),
            _format_fixed(_lookup(r, "output_tokens_cv"), 3),
        )
    return table


def print_table(
    console: Console,
    results: Mapping[str, Mapping[str, object]],
    config: Mapping[str, object],
) -> None:
    """Print ``render_table(results, config)`` to ``console``."""
    console.print(render_table(results, config))


def render_class_table(
    results: Mapping[str, Mapping[str, object]],
    config: Mapping[str, object],
    *,
    title: str = "Per length class (request total tokens)",
) -> Table:
    """One row per policy and length class of the ``classes`` of ``metrics.summarize`` objects:
    TTFT, TPOT and E2E p50/p99 and SLO attainment; classes without requests are left out, and
    those too small to count for capacity are marked."""
    table = Table(title=title, caption=table_caption(config), caption_justify="left")
    table.add_column("policy", style="bold")
    table.add_column("class")
    for header in (
        "requests",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "E2E p50",
        "E2E p99",
        "SLO%",
    ):
        table.add_column(header, justify="right")
    for policy, r in results.items():
        for name, _, _ in LENGTH_CLASSES:
            c = _lookup(r, "classes", name)
            n = _number(_lookup(c, "requests")) if isinstance(c, Mapping) else None
            if not isinstance(c, Mapping) or not n:
                continue
            share = _number(_lookup(c, "slo_attainment"))
            small = "" if n >= MIN_CLASS_REQUESTS else " (not judged)"
            table.add_row(
                policy,
                name,
                f"{n:.0f}{small}",
                *(
                    format_seconds(_lookup(c, metric, q))
                    for metric in ("ttft_s", "tpot_s", "e2e_s")
                    for q in ("p50", "p99")
                ),
                _NOTHING if share is None else f"{share:.0%}",
            )
    return table


def _plain(value: object) -> object:
    """JSON fallback for numpy scalars and arrays (everything else is refused)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(obj: object, **kwargs: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False, default=_plain, **kwargs)
    except ValueError as err:  # NaN or infinity: a metric that should have been null
        raise ValidationError(f"report is not strict JSON: {err}") from err


def write_json(path: str | os.PathLike[str], report: Mapping[str, object]) -> None:
    """Write ``report`` as sorted, 2-space-indented JSON with a trailing newline."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_dumps(report, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def request_row(policy: str, r: RequestRecord) -> dict[str, object]:
    """One line of the per-request JSONL."""
    return {
        "policy": policy,
        "request_id": r.request_id,
        "arrival_s": r.arrival_s,
        "first_token_s": r.first_token_s,
        "finish_s": r.finish_s,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "generated_tokens": r.generated_tokens,
        "instances": list(r.instances),
        "migrations": r.migrations,
        "preemptions": r.preemptions,
    }


def write_requests_jsonl(
    path: str | os.PathLike[str], records_by_policy: Mapping[str, Sequence[RequestRecord]]
) -> None:
    """One compact JSON object per request, policies and records in the order given."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for policy, records in records_by_policy.items():
            for r in records:
                f.write(_dumps(request_row(policy, r), separators=(",", ":")) + "\n")


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


def _plot_cdf(ax: Axes, values: np.ndarray[Any, np.dtype[np.float64]], label: str) -> None:
    # Log axes cannot show 0 (a request that needed no time): leave such points out.
    x = np.sort(values[values > 0.0])
    if len(x) == 0:
        return
    ax.plot(x, np.arange(1, len(x) + 1) / len(x), drawstyle="steps-post", label=label)


def _one_two_five(x: float, *, up: bool) -> float:
    """The nearest value of the 1-2-5 series at or below (``up`` False) or above ``x``."""
    decade = 10.0 ** math.floor(math.log10(x))
    steps = (1.0, 2.0, 5.0, 10.0)
    if up:
        return next(decade * m for m in steps if decade * m >= x * (1 - 1e-12))
    return max(decade * m for m in steps if decade * m <= x * (1 + 1e-12))


def _log_seconds_axis(ax: Axes) -> None:
    """Ticks on the 1-2-5 series with plain labels, limits widened to ticks so that every panel,
    however narrow its data, shows at least two labelled ticks (and none overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    xs = [float(x) for line in ax.get_lines() for x in np.asarray(line.get_xdata(), dtype=float)]
    if xs:
        # The 1% margin keeps a line that sits on a tick (e.g. everyone's TPOT equal) off the frame.
        ax.set_xlim(_one_two_five(min(xs) / 1.01, up=False), _one_two_five(max(xs) * 1.01, up=True))
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _figure_legend(fig: Any, axes: Sequence[Axes]) -> None:
    """One legend for the figure, outside the panels, with every policy drawn in any panel."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
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
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), layout="constrained")
    samples = {policy: latency_samples(records) for policy, records in records_by_policy.items()}
    for i, (ax, name) in enumerate(zip(axes, ("TTFT", "TPOT", "E2E"), strict=True)):
        for policy, latencies in samples.items():
            _plot_cdf(ax, latencies[i], policy)
        _log_seconds_axis(ax)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel(f"{name} (s, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(name)
        ax.grid(True, which="major", alpha=0.3)
    _figure_legend(fig, axes)
    fig.suptitle(title)
    _save(fig, plt, path)


# (panel title, keys into the result object)
_SWEEP_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mean E2E (s)", ("e2e_s", "mean")),
    ("p99 E2E (s)", ("e2e_s", "p99")),
    ("mean TTFT (s)", ("ttft_s", "mean")),
    ("mean TPOT (s)", ("tpot_s", "mean")),
    ("goodput (req/s)", ("goodput_requests_per_s",)),
)


def plot_sweep(
    path: str | os.PathLike[str],
    points: Mapping[str, Sequence[tuple[float, Mapping[str, object]]]],
    x_label: str = "rate (req/s)",
    *,
    title: str = "Rate sweep",
) -> None:
    """PNG of metrics versus rate: one panel per metric, one line per policy.

    ``points[policy]`` holds (rate, result object of ``metrics.summarize``); unmeasured (null)
    values leave a gap in the line.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(_SWEEP_PANELS), figsize=(22, 4.5), layout="constrained")
    for ax, (name, keys) in zip(axes, _SWEEP_PANELS, strict=True):
        for policy, series in points.items():
            ordered = sorted(series, key=lambda point: point[0])
            xs = [x for x, _ in ordered]
            ys = [_number(_lookup(result, *keys)) for _, result in ordered]
            ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=policy)
        ax.set_xlabel(x_label)
        ax.set_title(name)
        ax.set_ylim(bottom=0.0)
        ax.grid(True, alpha=0.3)
    _figure_legend(fig, axes)
    fig.suptitle(title)
    _save(fig, plt, path)
