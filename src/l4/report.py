"""Reports of simulator runs: terminal tables, JSON and per-request JSONL (plots: ``l4.plots``).

Each table has its own function (``render_tables`` for the results, ``render_capacity_table``);
``print_table`` prints the results with the notes a reader needs to judge them: the SLO goodput
was judged by, what CV means, and warnings when the run is overloaded.

Guarantees:

* A results table's caption always states trace, rate, instances, profile, alpha, seed and
  duration (EVALUATION.md's honesty rule): ``render_tables`` refuses a config that lacks one.
* ``render_tables`` lays the results out as metrics by policies, split into as many tables as it
  takes to fit the given width; policy names are never cut, every row label carries its unit, and
  a row of durations uses one unit (ms or s) for all policies.
* ``json_text`` and ``requests_jsonl_text`` are deterministic: the same input gives the same
  bytes. JSON is strict (NaN or infinity is refused), floats are written as Python's ``repr``.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from l4.errors import ValidationError
from l4.metrics import LENGTH_CLASSES, MIN_CLASS_REQUESTS, RequestRecord, SloConfig

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


def table_caption(config: Mapping[str, object]) -> str:
    """``trace=... rate=... ...``: the required keys first, then any others in sorted order."""
    missing = [key for key in CAPTION_KEYS if key not in config]
    if missing:
        raise ValidationError(f"result table needs {', '.join(missing)} in its config")
    extra = sorted(key for key in config if key not in CAPTION_KEYS)
    return "  ".join(f"{key}={config[key]}" for key in (*CAPTION_KEYS, *extra))


# --- the results table: one column per policy, one row per metric ---------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Metric:
    """One row of the results table: its label, where the value is, how it is shown."""

    label: str
    keys: tuple[str, ...]
    kind: str  # "seconds" (unit chosen per row), "count", "rate", "share" or "fixed"
    unit: str = ""  # shown in the label for kinds other than "seconds"
    digits: int = 2


_METRICS: tuple[_Metric, ...] = (
    _Metric(label="completed", keys=("completed",), kind="count", unit="requests"),
    _Metric(label="unfinished", keys=("unfinished",), kind="count", unit="requests"),
    _Metric(label="TTFT mean", keys=("ttft_s", "mean"), kind="seconds"),
    _Metric(label="TTFT p99", keys=("ttft_s", "p99"), kind="seconds"),
    _Metric(label="TPOT mean", keys=("tpot_s", "mean"), kind="seconds"),
    _Metric(label="ITL p99", keys=("itl_s", "p99"), kind="seconds"),
    _Metric(label="E2E mean", keys=("e2e_s", "mean"), kind="seconds"),
    _Metric(label="E2E p99", keys=("e2e_s", "p99"), kind="seconds"),
    _Metric(label="throughput", keys=("throughput", "requests_per_s"), kind="rate", unit="req/s"),
    _Metric(
        label="output",
        keys=("throughput", "output_tokens_per_s"),
        kind="rate",
        unit="tok/s",
        digits=0,
    ),
    _Metric(label="goodput", keys=("goodput_requests_per_s",), kind="rate", unit="req/s"),
    _Metric(label="SLO attainment", keys=("slo_attainment",), kind="share", unit="%"),
    _Metric(label="migrations", keys=("migrations",), kind="count"),
    _Metric(label="preemptions", keys=("preemptions",), kind="count"),
    _Metric(label="CV", keys=("output_tokens_cv",), kind="fixed", digits=3),
)


def _three_digits(x: float) -> str:
    """3 significant digits without an exponent: ``0.123``, ``1.23``, ``12.3``, ``1234``."""
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def _seconds_row(values: Sequence[float | None]) -> tuple[str, list[str]]:
    """(unit, cells) for a row of durations: milliseconds when every value is under a second,
    so that a row compares like with like."""
    measured = [abs(v) for v in values if v is not None]
    scale, unit = (1e3, "ms") if measured and max(measured) < 1.0 else (1.0, "s")
    cells = [_NOTHING if v is None else _three_digits(v * scale) for v in values]
    return unit, cells


def _cell(metric: _Metric, value: object) -> str:
    if metric.kind == "count":
        x = _number(value)
        return _NOTHING if x is None else f"{x:.0f}"
    if metric.kind == "share":
        x = _number(value)
        return _NOTHING if x is None else f"{x:.0%}".removesuffix("%")
    return _format_fixed(value, metric.digits)


def metric_rows(results: Mapping[str, Mapping[str, object]]) -> list[tuple[str, list[str]]]:
    """(label with unit, one cell per policy) for every metric row, policies in mapping order."""
    rows: list[tuple[str, list[str]]] = []
    for metric in _METRICS:
        values = [_lookup(r, *metric.keys) for r in results.values()]
        if metric.kind == "seconds":
            unit, cells = _seconds_row([_number(v) for v in values])
        else:
            unit, cells = metric.unit, [_cell(metric, v) for v in values]
        rows.append((f"{metric.label} ({unit})" if unit else metric.label, cells))
    return rows


def _metrics_table(
    rows: Sequence[tuple[str, list[str]]],
    policies: Sequence[str],
    columns: Sequence[int],
    title: str,
) -> Table:
    table = Table(title=title, caption_justify="left")
    table.add_column("metric", no_wrap=True)
    for i in columns:
        # A policy name is never cut: its column is at least as wide as the name.
        table.add_column(policies[i], justify="right", no_wrap=True, min_width=len(policies[i]))
    for label, cells in rows:
        table.add_row(label, *(cells[i] for i in columns))
    return table


def render_tables(
    results: Mapping[str, Mapping[str, object]],
    config: Mapping[str, object],
    *,
    width: int,
    title: str = "L4 simulation",
) -> list[Table]:
    """The results as metric-by-policy tables no wider than ``width`` columns: as many policies
    side by side as fit, the rest in further tables. ``config`` must describe the run
    (``table_caption``); ``print_table`` prints that description under the tables."""
    table_caption(config)
    policies = list(results)
    rows = metric_rows(results)
    # Measured on an unbounded console: rich clamps a measurement to the console's width.
    probe = Console(width=1_000_000, file=io.StringIO())
    chunks: list[list[int]] = [[]]
    for i in range(len(policies)):
        trial = [*chunks[-1], i]
        table = _metrics_table(rows, policies, trial, title)
        fits = Measurement.get(probe, probe.options, table).maximum <= width
        if fits or not chunks[-1]:
            chunks[-1] = trial
        else:
            chunks.append([i])
    return [
        _metrics_table(rows, policies, chunk, title if k == 0 else f"{title} (continued)")
        for k, chunk in enumerate(chunks)
    ]


def render_table(
    results: Mapping[str, Mapping[str, object]],
    config: Mapping[str, object],
    *,
    title: str = "L4 simulation",
) -> Table:
    """All policies in one metric-by-policy table (``render_tables`` splits it for a terminal)."""
    return render_tables(results, config, width=1_000_000, title=title)[0]


def slo_sentence(slo: SloConfig) -> str:
    """The SLO that goodput was judged by, in one line."""
    scaled = f"{slo.scale:g}x unloaded"
    ttft = scaled if slo.ttft_s is None else format_seconds(slo.ttft_s)
    tpot = scaled if slo.tpot_s is None else format_seconds(slo.tpot_s)
    uses_scale = slo.ttft_s is None or slo.tpot_s is None
    note = " (unloaded: the request alone on an idle instance)" if uses_scale else ""
    return f"goodput counts requests that met TTFT <= {ttft} and TPOT <= {tpot}{note}"


CV_SENTENCE = (
    "CV: coefficient of variation (std / mean) of output tokens generated per instance; "
    "0 is perfectly balanced"
)

# A run is called overloaded when, for some policy, requests were left unfinished, fewer than this
# share met their SLOs, or mean TTFT exceeded this many times the unloaded one (queueing dominates).
OVERLOAD_ATTAINMENT = 0.5
OVERLOAD_TTFT_RATIO = 10.0


def overload_warnings(results: Mapping[str, Mapping[str, object]]) -> list[str]:
    """One line per sign of overload, per policy; empty when the run is not overloaded."""
    lines: list[str] = []
    for policy, r in results.items():
        unfinished = _number(_lookup(r, "unfinished"))
        if unfinished:
            total = unfinished + (_number(_lookup(r, "completed")) or 0.0)
            lines.append(
                f"{policy}: {unfinished:.0f} of {total:.0f} requests unfinished when the "
                "simulation stopped"
            )
        share = _number(_lookup(r, "slo_attainment"))
        if share is not None and share < OVERLOAD_ATTAINMENT:
            lines.append(f"{policy}: only {share:.0%} of requests met the goodput SLO")
        ttft = _number(_lookup(r, "ttft_s", "mean"))
        unloaded = _number(_lookup(r, "unloaded_ttft_s", "mean"))
        if ttft is not None and unloaded and ttft > OVERLOAD_TTFT_RATIO * unloaded:
            lines.append(
                f"{policy}: mean TTFT {format_seconds(ttft)} is {ttft / unloaded:.0f}x the "
                f"unloaded {format_seconds(unloaded)}: requests mostly wait in queues"
            )
    return lines


def print_table(
    console: Console,
    results: Mapping[str, Mapping[str, object]],
    config: Mapping[str, object],
    *,
    slo: SloConfig | None = None,
) -> None:
    """The results tables for ``console``'s width, the run they describe, the SLO and CV notes,
    and overload warnings."""
    for table in render_tables(results, config, width=console.width):
        console.print(table)
    console.print(f"run: {table_caption(config)}", highlight=False)
    if slo is not None:
        console.print(slo_sentence(slo), highlight=False)
    console.print(CV_SENTENCE, highlight=False)
    warnings = overload_warnings(results)
    if warnings:
        console.print("[bold yellow]warning: overloaded at this rate[/]")
        for line in warnings:
            console.print(f"[yellow]  {line}[/]", highlight=False)
        console.print(
            "[yellow]  lower --rate-scale or add --instances; `l4 capacity` finds the largest "
            "rate that keeps goodput at the target[/]",
            highlight=False,
        )


# --- the capacity table: one row per policy ------------------------------------------------------


def render_capacity_table(
    results: Mapping[str, Mapping[str, object]],
    *,
    target: float,
    title: str = "L4 capacity",
) -> Table:
    """Each policy's largest rate with SLO attainment >= ``target``: as ``--rate-scale`` (a
    multiple of the trace's or --rate's rate), in requests/s, and its goodput; dashes where even
    the lowest rate probed missed the target."""
    table = Table(title=title)
    table.add_column("policy", no_wrap=True)
    for header in ("--rate-scale", "rate (req/s)", f"goodput (req/s, >= {target:.0%} SLO)"):
        table.add_column(header, justify="right")
    for policy, r in results.items():
        cells = [
            _number(_lookup(r, key))
            for key in ("rate_scale", "requests_per_s", "goodput_requests_per_s")
        ]
        table.add_row(policy, *(_NOTHING if c is None else f"{c:.3g}" for c in cells))
    return table


def print_capacity(
    console: Console,
    results: Mapping[str, Mapping[str, object]],
    config: Mapping[str, object],
    *,
    target: float,
    slo: SloConfig,
) -> None:
    """The capacity table, the run it describes (``table_caption``) and the SLO it judged by."""
    caption = table_caption(config)
    console.print(render_capacity_table(results, target=target))
    console.print(f"run: {caption}", highlight=False)
    console.print(slo_sentence(slo), highlight=False)


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


def json_text(report: Mapping[str, object]) -> str:
    """``report`` as sorted, 2-space-indented JSON with a trailing newline."""
    return _dumps(report, sort_keys=True, indent=2) + "\n"


def write_json(path: str | os.PathLike[str], report: Mapping[str, object]) -> None:
    """Write ``json_text(report)`` to ``path``, creating its directory."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json_text(report), encoding="utf-8")


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


def requests_jsonl_text(records_by_policy: Mapping[str, Sequence[RequestRecord]]) -> str:
    """One compact JSON object per request and line, policies and records in the order given."""
    return "".join(
        _dumps(request_row(policy, r), separators=(",", ":")) + "\n"
        for policy, records in records_by_policy.items()
        for r in records
    )


def write_requests_jsonl(
    path: str | os.PathLike[str], records_by_policy: Mapping[str, Sequence[RequestRecord]]
) -> None:
    """Write ``requests_jsonl_text(records_by_policy)`` to ``path``, creating its directory."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(requests_jsonl_text(records_by_policy), encoding="utf-8")
