"""The experiment suite: the scenarios of docs/design/EVALUATION.md in the simulator.

For each scenario (where decode batches mix short and long contexts: ServeGen's DeepSeek-R1
reasoning traffic, Azure chat with 10% long documents; where they do not: Mooncake on 3B and 8B,
Azure chat, ShareGPT, ServeGen's m-mid language traffic; all on 16 instances) it sweeps the rate
from light load to past saturation for every baseline and L4 policy over several seeds (windows of
the trace), runs the migrating policies with token replay and with replay from a shared KV store
too, and bisects every policy's capacity with the per-class rule (SLO attainment >= 90% overall
and in every length class). Then it measures L4 at the best baseline's capacity, and in the
premise scenarios L4's advantage as the heterogeneity coefficient alpha grows (the curve). It
writes docs/results.md (every number in it computed from the runs), plots under docs/results/ and
docs/results/results.json. Runs are cached in a JSON-lines file keyed by run and code version, so
a rerun resumes. Usage:

    python benchmarks/experiments.py [--quick] [--jobs N] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _experiments_lib import (
    ALPHAS,
    CURVE_ALPHAS,
    KV_TRANSFER,
    METRICS,
    PAPER_ALPHA,
    REPLAY,
    ROOT,
    SCENARIOS,
    STORE,
    STORE_BANDWIDTH_BYTES_PER_S,
    WINDOW_STRIDE,
    WORKLOAD_METRICS,
    Cell,
    Plan,
    Record,
    Results,
    Roles,
    RunCache,
    RunSpec,
    Scenario,
    Stat,
    SuiteData,
    alpha_label,
    best_baseline,
    code_version,
    execute,
    git_describe,
    metric,
    stat,
)
from l4.cliargs import OneLineParser, non_negative_float, positive_float, positive_int
from l4.errors import L4Error, UnknownNameError, ValidationError
from l4.plots import plot_sweep
from l4.policies.base import option_families, policy_names
from l4.report import format_seconds

DEFAULT_OUT = ROOT / "docs" / "results.md"
DEFAULT_CACHE = ROOT / "out" / "experiments" / "runs.jsonl"
# Durations are per scenario (Scenario.duration_s; halved by --quick).
FULL = {"seeds": 2, "capacity_iterations": 3}
QUICK = {"seeds": 1, "capacity_iterations": 2}
# A few policy runs past saturation can take orders of magnitude longer than the rest; the limit
# keeps one of them from holding the suite. Timed-out runs are listed in the report.
DEFAULT_RUN_TIMEOUT_S = 600.0
GOODPUT_TARGET = 0.9
SLO_SCALE = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="experiments.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke test: 2 rates per scenario, {QUICK['seeds']} seed, half of each "
        f"scenario's window, {QUICK['capacity_iterations']} bisection steps (default: 3 rates, "
        f"{FULL['seeds']} seeds, the scenario's window, {FULL['capacity_iterations']} steps)",
    )
    p.add_argument(
        "--jobs", type=positive_int, default=os.cpu_count() or 1, help="worker processes"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report path (.md)")
    p.add_argument(
        "--scenarios",
        help=f"comma-separated subset of: {', '.join(s.name for s in SCENARIOS)} (default: all)",
    )
    p.add_argument(
        "--policies",
        help=f"comma-separated subset of: {', '.join(Roles().wanted())} "
        "(default: every one of them that is registered)",
    )
    p.add_argument("--seeds", type=positive_int, help="number of seeds (0..N-1)")
    p.add_argument(
        "--duration",
        type=positive_float,
        help="keep arrivals in the first S s in every scenario (default: each scenario's window)",
    )
    p.add_argument(
        "--no-curve", action="store_true", help="skip the heterogeneity curve (alpha constants)"
    )
    p.add_argument(
        "--no-replay",
        action="store_true",
        help="skip the replay and replay+store runs of the migrating policies",
    )
    p.add_argument("--capacity-iterations", type=positive_int, help="bisection steps")
    p.add_argument("--no-capacity", action="store_true", help="skip the capacity searches")
    p.add_argument(
        "--run-timeout",
        type=non_negative_float,
        default=DEFAULT_RUN_TIMEOUT_S,
        help="give up on one run after S s of wall time and report it as failed; "
        "0 = no limit (default: %(default)g)",
    )
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="JSON-lines run cache")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    return p


def _names(text: str, known: Sequence[str], kind: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValidationError(f"--{kind}s: no {kind} named in {text!r}")
    for name in names:
        if name not in known:
            raise UnknownNameError(kind, name, list(known))
    return names


def build_plan(args: argparse.Namespace) -> Plan:
    preset = QUICK if args.quick else FULL
    scenarios = list(SCENARIOS)
    if args.scenarios is not None:
        chosen = _names(args.scenarios, [s.name for s in SCENARIOS], "scenario")
        scenarios = [s for s in SCENARIOS if s.name in chosen]
    roles = Roles()
    families = set(option_families())
    registered = {
        n for n in roles.wanted() if n in policy_names() or n.partition(":")[0] in families
    }
    wanted = list(roles.wanted())
    if args.policies is not None:
        wanted = _names(args.policies, wanted, "policy")
        unregistered = [n for n in wanted if n not in registered]
        if unregistered:
            raise ValidationError(
                f"--policies: not registered in this build: {', '.join(unregistered)} "
                f"(registered: {', '.join(sorted(registered))})"
            )
    return Plan(
        scenarios=tuple(scenarios),
        policies=tuple(n for n in wanted if n in registered),
        missing_policies=tuple(n for n in roles.wanted() if n not in registered),
        roles=roles,
        seeds=tuple(range(args.seeds or int(preset["seeds"]))),
        alphas=ALPHAS,
        duration_s=None if args.duration is None else float(args.duration),
        quick=bool(args.quick),
        capacity=not args.no_capacity,
        capacity_iterations=int(args.capacity_iterations or preset["capacity_iterations"]),
        goodput_target=GOODPUT_TARGET,
        slo_scale=SLO_SCALE,
        code=code_version(),
        curve_alphas=() if args.no_curve else CURVE_ALPHAS,
        mechanisms_extra=not args.no_replay,
    )


class Progress:
    """One line per finished run on stderr, with a running estimate of the time left."""

    def __init__(self, plan: Plan, jobs: int) -> None:
        self.jobs = jobs
        self.t0 = time.perf_counter()
        searched = [c for c in plan.cells() if plan.searched(c)]
        searches = len(searched) * len(plan.seeds) if plan.capacity else 0
        # Bracketing from the start guess takes about 3 probes, then one per bisection step.
        self.expected = len(plan.sweep_specs()) + searches * (plan.capacity_iterations + 3)
        self.done = 0
        self.cached = 0
        self.wall_s = 0.0
        self._lock = threading.Lock()
        print(
            f"plan: {len(plan.sweep_specs())} sweep runs and {searches} capacity searches "
            f"(about {self.expected} runs in all) on {jobs} worker(s)",
            file=sys.stderr,
        )

    def __call__(self, spec: RunSpec, record: Record, cached: bool) -> None:
        with self._lock:
            self.done += 1
            if cached:
                self.cached += 1
                return
            self.wall_s += float(str(record.get("wall_s", 0.0)))
            simulated = self.done - self.cached
            left = max(0, self.expected - self.done) * self.wall_s / simulated / self.jobs
            if "error" in record:
                outcome = f"FAILED {record['error']}"
            else:
                e2e = metric(record, "e2e_mean_s")
                slo = metric(record, "slo_attainment")
                outcome = (
                    f"E2E mean {'-' if e2e is None else f'{e2e:.3g} s'}, "
                    f"SLO {'-' if slo is None else f'{slo:.0%}'}"
                )
            print(
                f"[{self.done}/~{self.expected}, {self.cached} cached, "
                f"{time.perf_counter() - self.t0:.0f} s, ~{left / 60:.0f} min left] "
                f"{spec.label()}: {float(str(record.get('wall_s', 0.0))):.1f} s; {outcome}",
                file=sys.stderr,
                flush=True,
            )


# ----------------------------------------------------------------------------- the report

# The paper's headline claims (arXiv 2512.19179 abstract), as text for the comparison table.
# They are the paper's numbers, never ours: every measured value next to them is computed below.
PAPER_CLAIMS: dict[str, str] = {
    "e2e_mean": "67% lower mean E2E latency than the best baseline",
    "e2e_p99": "69% lower tail (p99) E2E latency",
    "capacity": "2.89x throughput",
    "refine_latency": "QoE-driven refinement: 21% lower latency than request-count or memory "
    "balancing",
    "refine_capacity": "QoE-driven refinement: 12% higher throughput than request-count or "
    "memory balancing",
    "cv": "bid-ask: 47% lower coefficient of variation of output tokens than round robin",
}
COMPARED: tuple[tuple[str, str], ...] = (
    ("e2e_mean_s", "mean E2E"),
    ("e2e_p99_s", "p99 E2E"),
    ("ttft_mean_s", "mean TTFT"),
    ("tpot_mean_s", "mean TPOT"),
)
DETAIL_METRICS: tuple[tuple[str, str], ...] = (
    *COMPARED,
    ("slo_attainment", "SLO attainment"),
    ("goodput_rps", "goodput (req/s)"),
    ("output_tokens_cv", "output-token CV"),
    ("migrations", "migrations"),
    ("preemptions", "preemptions"),
    ("unfinished", "unfinished requests"),
)
NOTHING = "—"
STORE_GBPS = STORE_BANDWIDTH_BYTES_PER_S / 1e9
FAILED = "failed (see Failed runs)"
DAGGER = "†"


def _seconds(x: float) -> str:
    return format_seconds(x)


def _plain(x: float) -> str:
    return f"{x:.3g}"


def _share(x: float) -> str:
    return f"{x:.1%}"


def _count(x: float) -> str:
    return f"{x:,.0f}"


def _scale(x: float) -> str:
    return f"x{x:.3g}"


def _change(x: float) -> str:
    return f"{x * 100:+.1f}%"


FORMATS = {
    "slo_attainment": _share,
    "goodput_rps": _plain,
    "output_tokens_cv": lambda x: f"{x:.3f}",
    "migrations": _count,
    "preemptions": _count,
    "unfinished": _count,
}


def fmt_stat(s: Stat | None, fmt: Callable[[float], str] = _seconds) -> str:
    """Median, with [min–max] over seeds when they differ."""
    if s is None:
        return NOTHING
    text = fmt(s.median)
    if s.n > 1 and s.lo != s.hi:
        text += f" [{fmt(s.lo)}–{fmt(s.hi)}]"
    return text


def point_text(
    results: Results, cell: Cell, rate: float, name: str, fmt: Callable[[float], str] = _seconds
) -> str:
    """A sweep point's median [range]; says so when a run failed or seeds are missing."""
    s = results.point(cell, rate, name)
    text = fmt_stat(s, fmt)
    if results.failed(cell, rate):
        seeds = len(results.plan.seeds)
        text = FAILED if s is None else f"{text} ({s.n}/{seeds} seeds, rest {FAILED})"
    return text


def capacity_text(results: Results, cell: Cell) -> str:
    """Capacity multiplier over seeds, or why there is none."""
    scale, _ = results.capacity(cell)
    if scale is None:
        if results.capacity_failed(cell):
            return FAILED
        lowest = [f.probes[0][0] for f in results.capacity_runs(cell) if f and f.probes]
        return f"< x{min(lowest):.3g}" if lowest else NOTHING
    text = fmt_stat(scale, _scale)
    if results.capacity_failed(cell):
        text += f" ({scale.n}/{len(results.plan.seeds)} seeds, rest {FAILED})"
    return text


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"

    out = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if len(row) != len(header):  # a renderer bug: the table would be read wrongly
            raise ValueError(f"table row of {len(row)} cells under {len(header)} columns: {row}")
        out.append(line(row))
    return "\n".join(out)


def kv_cell(sc: Scenario, alpha: float | None, policy: str, mechanism: str = KV_TRANSFER) -> Cell:
    return Cell(scenario=sc, alpha=alpha, mechanism=mechanism, policy=policy)


def workload_stat(results: Results, sc: Scenario, rate: float, name: str) -> Stat | None:
    """A workload figure at one rate: the same for every policy, so any run of it will do."""
    values: list[float | None] = []
    for cell in results.plan.cells():
        if cell.scenario == sc:
            values.extend(v for v in results.values(cell, rate, name) if v is not None)
    return stat(values)


def _span(stats: Sequence[Stat | None], fmt: Callable[[float], str]) -> str:
    present = [s for s in stats if s is not None]
    if not present:
        return "not measured"
    lo, hi = min(s.lo for s in present), max(s.hi for s in present)
    return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"


def caption(
    results: Results,
    sc: Scenario,
    alpha: str,
    mechanism: str,
    rates: Sequence[float] | None,
) -> str:
    """EVALUATION.md: every table says trace, rate, instances, profile, alpha, seed, duration."""
    plan = results.plan
    if rates is None:
        rate = (
            f"bisected on the rate multiplier from x{sc.capacity_start_scale:g} "
            f"({plan.capacity_iterations} steps; probes listed in results.json)"
        )
        span = "per probe"
    else:
        rps = _span([workload_stat(results, sc, r, "mean_rate_rps") for r in rates], _plain)
        multipliers = f"x{min(rates):g}" + ("" if len(set(rates)) == 1 else f"–x{max(rates):g}")
        rate = f"{multipliers} of the trace's mean rate ({rps} req/s)"
        spans = _span([workload_stat(results, sc, r, "span_s") for r in rates], _count)
        reqs = _span([workload_stat(results, sc, r, "requests") for r in rates], _count)
        span = f"{spans} s of arrivals, {reqs} requests"
    seeds = ", ".join(str(s) for s in plan.seeds)
    return (
        f"*trace={sc.trace} · rate={rate} · instances={sc.num_instances} · "
        f"profile={sc.profile} · alpha={alpha} · seeds={seeds} (median [min–max]) · "
        f"duration=arrivals in the first {plan.duration(sc):g} s after rate scaling ({span}) · "
        f"migration={mechanism} · SLO: TTFT and TPOT within {plan.slo_scale:g}x unloaded, "
        f"target {plan.goodput_target:.0%} overall and per length class*"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Versus:
    """The subject policy against a named reference on one metric; change = subject/ref - 1."""

    subject: Stat
    reference_name: str
    reference: Stat
    change: float | None
    unfinished: bool  # some run of either left requests unfinished: latency over finished only

    def text(self, fmt: Callable[[float], str] = _seconds) -> str:
        change = NOTHING if self.change is None else _change(self.change)
        mark = DAGGER if self.unfinished else ""
        return (
            f"{change}{mark} ({fmt_stat(self.subject, fmt)} vs "
            f"{fmt_stat(self.reference, fmt)} {self.reference_name})"
        )


def _unfinished(results: Results, cell: Cell, rate: float) -> bool:
    return any((v or 0) > 0 for v in results.values(cell, rate, "unfinished"))


def versus(
    results: Results,
    sc: Scenario,
    alpha: float | None,
    rate: float,
    name: str,
    subject: str,
    references: Sequence[str],
    mechanism: str = KV_TRANSFER,
) -> Versus | None:
    """``subject`` against the reference with the lowest median (the best, for latencies)."""
    if not results.has_in(sc, subject, alpha):
        return None
    mine = results.point(kv_cell(sc, alpha, subject, mechanism), rate, name)
    candidates = [
        (s, ref)
        for ref in references
        if results.has_in(sc, ref, alpha)
        and (c := _ref_cell(results, sc, alpha, ref, mechanism)) is not None
        and (s := results.point(c, rate, name)) is not None
    ]
    if mine is None or not candidates:
        return None
    best, best_name = min(candidates, key=lambda c: c[0].median)
    ref_cell = _ref_cell(results, sc, alpha, best_name, mechanism)
    assert ref_cell is not None
    unfinished = _unfinished(results, kv_cell(sc, alpha, subject, mechanism), rate) or (
        _unfinished(results, ref_cell, rate)
    )
    return Versus(
        subject=mine,
        reference_name=best_name,
        reference=best,
        change=mine.median / best.median - 1.0 if best.median > 0 else None,
        unfinished=unfinished,
    )


def over_rates(changes: Sequence[float | None]) -> tuple[dict[str, float] | None, str]:
    present = [c for c in changes if c is not None]
    if not present:
        return None, "not measured"
    s = stat(present)
    assert s is not None
    summary = {"median": s.median, "min": s.lo, "max": s.hi, "rates": float(s.n)}
    text = (
        f"{_change(s.median)} median over {s.n} rate{'s' if s.n > 1 else ''} "
        f"({_change(s.lo)} to {_change(s.hi)})"
    )
    if s.n < len(changes):
        text += f"; {len(changes) - s.n} of {len(changes)} rates not measured"
    return summary, text


def capacity_versus(
    results: Results,
    sc: Scenario,
    alpha: float | None,
    subject: str,
    references: Sequence[str],
    mechanism: str = KV_TRANSFER,
) -> tuple[float | None, str]:
    """Capacity ratio subject / best (highest) reference, as a number and a sentence."""
    if not results.has_in(sc, subject, alpha):
        return None, f"not measured ({subject} not run here)"
    mine, _ = results.capacity(kv_cell(sc, alpha, subject, mechanism))
    refs = [
        (s, ref)
        for ref in references
        if results.has_in(sc, ref, alpha)
        and (c := _ref_cell(results, sc, alpha, ref, mechanism)) is not None
        and (s := results.capacity(c)[0]) is not None
    ]
    if mine is None:
        return (
            None,
            f"not measured: {capacity_text(results, kv_cell(sc, alpha, subject, mechanism))}",
        )
    if not refs:
        return None, "not measured: no reference capacity"
    best, best_name = max(refs, key=lambda c: c[0].median)
    ratio = mine.median / best.median
    return ratio, capacity_ratio_text(mine, best, best_name, results.plan.capacity_iterations)


def capacity_grid_step(iterations: int) -> float:
    """The resolution of a capacity: bisection steps halve the octave of the bracket
    geometrically, so found multipliers lie on a grid of ratio 2^(1 / 2^iterations)."""
    return float(2.0 ** (2.0**-iterations))


def capacity_ratio_text(mine: Stat, best: Stat, best_name: str, iterations: int) -> str:
    """``mine / best`` as a sentence that states its resolution and spread: a ratio no larger
    than one grid step (either way) is a tie; overlapping ranges over seeds are said."""
    ratio = mine.median / best.median
    step = capacity_grid_step(iterations)
    text = f"{ratio:.2f}x ({fmt_stat(mine, _scale)} vs {fmt_stat(best, _scale)} {best_name})"
    if max(ratio, 1.0 / ratio) <= step * (1.0 + 1e-6):
        return f"tie (within grid step {step:.2f}x): {text}"
    if mine.lo <= best.hi and best.lo <= mine.hi:
        text += "; ranges over seeds overlap"
    return text


def migrating(roles: Roles, policy: str) -> bool:
    return policy.partition(":")[0] in roles.migrating


def _ref_cell(
    results: Results, sc: Scenario, alpha: float | None, policy: str, mechanism: str
) -> Cell | None:
    """A reference policy's runs under ``mechanism``: its own, or its kv-transfer ones if it
    never migrates (the mechanism does not touch it); None for a migrating policy not run so."""
    plan = results.plan
    if mechanism in plan.mechanisms(sc, policy, alpha):
        return kv_cell(sc, alpha, policy, mechanism)
    if migrating(plan.roles, policy):
        return None
    return kv_cell(sc, alpha, policy, KV_TRANSFER)


def _missing_note(results: Results, names: Sequence[str]) -> str | None:
    missing = [n for n in names if not results.has(n)]
    if not missing:
        return None
    unregistered = [n for n in missing if n in results.plan.missing_policies]
    unselected = [n for n in missing if n not in unregistered]
    reasons = [
        *([f"{', '.join(unregistered)} not registered in this build"] if unregistered else []),
        *([f"{', '.join(unselected)} left out by --policies"] if unselected else []),
    ]
    return f"Not measured: {'; '.join(reasons)}."


def section_versus(results: Results, sc: Scenario, alpha: float | None) -> list[str]:
    roles = results.plan.roles
    label = alpha_label(alpha)
    out = [f"#### {roles.subject} vs the best baseline (alpha={label})", ""]
    missing = _missing_note(results, [roles.subject])
    baselines = swept_baselines(results, sc)
    if missing or not baselines:
        return [*out, missing or "Not measured: no baseline registered.", ""]
    rows = []
    dagger = False
    for rate in results.plan.rates(sc):
        cells = [f"x{rate:g}", fmt_stat(workload_stat(results, sc, rate, "mean_rate_rps"), _plain)]
        for name, _ in COMPARED:
            v = versus(results, sc, alpha, rate, name, roles.subject, baselines)
            if v is not None:
                cells.append(v.text())
            else:
                failed = results.failed(kv_cell(sc, alpha, roles.subject), rate)
                cells.append(FAILED if failed else NOTHING)
            dagger = dagger or (v is not None and v.unfinished)
        rows.append(cells)
    header = ["rate", "req/s", *(title for _, title in COMPARED)]
    out += [
        f"Change of `{roles.subject}` versus the best baseline per metric and rate (best = lowest "
        f"median among {', '.join(baselines)}; negative = {roles.subject} is lower).",
        "",
        md_table(header, rows),
        "",
        caption(results, sc, label, KV_TRANSFER, results.plan.rates(sc)),
        "",
    ]
    if dagger:
        out += [
            f"{DAGGER} some requests had not finished when the simulation's drain window ended; "
            "latencies cover finished requests only.",
            "",
        ]
    return out


def swept_baselines(results: Results, sc: Scenario) -> list[str]:
    roles = results.plan.roles
    return [b for b in roles.baselines if results.has_in(sc, b) and b not in roles.capacity_only]


def all_baselines(results: Results, sc: Scenario, alpha: float | None = None) -> list[str]:
    return [b for b in results.plan.roles.baselines if results.has_in(sc, b, alpha)]


def capped_text(results: Results, cell: Cell) -> str:
    """What failed first above the capacity, over seeds: "<2K (2/3), overall (1/3)"."""
    counts: dict[str, int] = {}
    runs = [f for f in results.capacity_runs(cell) if f is not None and f.error is None]
    for found in runs:
        for name in found.capped_by():
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return NOTHING
    ranked = sorted(counts.items(), key=lambda x: -x[1])
    return ", ".join(f"{k} ({v}/{len(runs)})" for k, v in ranked)


def section_capacity(results: Results, sc: Scenario) -> list[str]:
    plan = results.plan
    out = [
        f"#### Capacity (largest rate with SLO attainment >= {plan.goodput_target:.0%} overall "
        "and in every length class)",
        "",
    ]
    if not plan.capacity:
        return [*out, "Not measured (--no-capacity).", ""]
    alpha = plan.alphas[0]
    rows = []
    for policy in plan.scenario_policies(sc, alpha):
        cell = kv_cell(sc, alpha, policy)
        rows.append(
            [
                policy,
                capacity_text(results, cell),
                fmt_stat(results.capacity(cell)[1], _plain),
                capped_text(results, cell),
            ]
        )
    header = ["policy", "capacity", "req/s", "failed first above it (seeds)"]
    out += [md_table(header, rows), ""]
    out += [caption(results, sc, alpha_label(alpha), KV_TRANSFER, None), ""]
    _, text = capacity_versus(results, sc, alpha, plan.roles.subject, all_baselines(results, sc))
    out += [f"* {plan.roles.subject} / best baseline: {text}", ""]
    splits = [b for b in all_baselines(results, sc) if b.startswith("pd_disagg")]
    found = [
        (s.median, b)
        for b in splits
        if (s := results.capacity(kv_cell(sc, alpha, b))[0]) is not None
    ]
    if found:
        best_cap, best_name = max(found)
        out += [
            f"* Best prefill/decode split: `{best_name}` (x{best_cap:.3g}); "
            + ", ".join(f"`{b}` {capacity_text(results, kv_cell(sc, alpha, b))}" for b in splits),
            "",
        ]
    return out


def section_balance(results: Results, sc: Scenario) -> list[str]:
    plan = results.plan
    bid, rr = plan.roles.balance_pair
    if not (results.has_in(sc, bid) and results.has_in(sc, rr)):
        return []
    out = [
        f"#### Balance: output-token CV inside groups, {bid} (bid-ask) vs {rr} (round robin)",
        "",
    ]
    fmt = FORMATS["output_tokens_cv"]
    alpha = plan.alphas[0]
    rows = []
    for rate in plan.rates(sc):
        a = results.point(kv_cell(sc, alpha, bid), rate, "output_tokens_cv")
        b = results.point(kv_cell(sc, alpha, rr), rate, "output_tokens_cv")
        change = NOTHING
        if a is not None and b is not None and b.median > 0:
            change = _change(a.median / b.median - 1.0)
        rows.append(
            [
                f"x{rate:g}",
                point_text(results, kv_cell(sc, alpha, bid), rate, "output_tokens_cv", fmt),
                point_text(results, kv_cell(sc, alpha, rr), rate, "output_tokens_cv", fmt),
                change,
            ]
        )
    out += [
        md_table(["rate", bid, rr, f"change of {bid}"], rows),
        "",
        caption(results, sc, alpha_label(alpha), KV_TRANSFER, plan.rates(sc)),
        "",
    ]
    return out


def section_ablation(results: Results, sc: Scenario, title: str, names: Sequence[str]) -> list[str]:
    """Mean and p99 E2E, SLO attainment and capacity of ``names``, each against the first."""
    plan = results.plan
    present = [n for n in names if results.has_in(sc, n)]
    if len(present) < 2:
        return []
    out = [f"#### {title}", ""]
    first = present[0]
    alpha = plan.alphas[0]
    rows = []
    for policy in present:
        cell = kv_cell(sc, alpha, policy)
        row = [policy]
        changes: list[float | None] = []
        for rate in plan.rates(sc):
            s = results.point(cell, rate, "e2e_mean_s")
            ref = results.point(kv_cell(sc, alpha, first), rate, "e2e_mean_s")
            p99 = point_text(results, cell, rate, "e2e_p99_s")
            slo = point_text(results, cell, rate, "slo_attainment", _share)
            row.append(f"{point_text(results, cell, rate, 'e2e_mean_s')} / {p99}, {slo}")
            ok = s is not None and ref is not None and s.median > 0
            changes.append(ref.median / s.median - 1.0 if ok and ref and s else None)
        row.append(capacity_text(results, cell) if plan.capacity else NOTHING)
        row.append(NOTHING if policy == first else over_rates(changes)[1])
        rows.append(row)
    header = [
        "policy",
        *(f"x{r:g}: mean / p99 E2E, SLO" for r in plan.rates(sc)),
        "capacity",
        f"{first} vs this policy (mean E2E)",
    ]
    out += [
        md_table(header, rows),
        "",
        caption(results, sc, alpha_label(alpha), KV_TRANSFER, plan.rates(sc)),
        "",
    ]
    return out


def section_ablations(results: Results, sc: Scenario) -> list[str]:
    roles = results.plan.roles
    refinement = tuple(n for n in roles.refinement if n != "l4_static")
    groups = (
        ("Staging ({} vs one stage with the same bids)", roles.staging),
        ("Re-planning and refinement ({} vs the initial plan kept)", (roles.subject, "l4_static")),
        ("Refinement rules ({}: QoE vs request-count and memory balancing)", refinement),
        (
            "Planner objective, spill and overflow ({}: mean-latency objective, no spill, no "
            "overflow)",
            roles.objective,
        ),
    )
    out: list[str] = []
    for title, names in groups:
        present = [n for n in names if results.has_in(sc, n)]
        out += section_ablation(results, sc, title.format(" vs ".join(present)), names)
    return out


def section_mechanisms(results: Results, sc: Scenario) -> list[str]:
    plan = results.plan
    alpha = plan.alphas[0]
    movers = [
        p for p in plan.scenario_policies(sc, alpha) if len(plan.mechanisms(sc, p, alpha)) > 1
    ]
    if not movers:
        return []
    out = [
        "#### Migration mechanisms: kv-transfer, token replay, replay from a shared KV store",
        "",
        "Cells: mean E2E / p99 E2E, migrations (medians over seeds). `replay+store` loads a moved "
        f"request's context from a shared KV store at {STORE_GBPS:g} GB/s instead of re-prefilling "
        "it. Non-migrating policies are unaffected by the mechanism and appear only in the "
        "kv-transfer tables.",
        "",
    ]
    rows = []
    for policy in movers:
        for mech in plan.mechanisms(sc, policy, alpha):
            cell = kv_cell(sc, alpha, policy, mech)
            row = [policy, mech]
            for rate in plan.rates(sc):
                mean = results.point(cell, rate, "e2e_mean_s")
                p99 = results.point(cell, rate, "e2e_p99_s")
                moves = results.point(cell, rate, "migrations")
                text = f"{fmt_stat(mean)} / {fmt_stat(p99)}, {fmt_stat(moves, _count)} migr"
                if results.failed(cell, rate):
                    text = FAILED if mean is None else f"{text} (some seeds {FAILED})"
                row.append(text)
            row.append(capacity_text(results, cell) if plan.capacity else NOTHING)
            rows.append(row)
    header = ["policy", "mechanism", *(f"x{r:g}" for r in plan.rates(sc)), "capacity"]
    mechanisms = ", ".join(dict.fromkeys(m for p in movers for m in plan.mechanisms(sc, p, alpha)))
    out += [
        md_table(header, rows),
        "",
        caption(results, sc, alpha_label(alpha), mechanisms, plan.rates(sc)),
        "",
    ]
    for mech in (REPLAY, STORE):
        if mech in plan.mechanisms(sc, plan.roles.subject, alpha):
            _, text = capacity_versus(
                results, sc, alpha, plan.roles.subject, all_baselines(results, sc), mech
            )
            out.append(f"* {plan.roles.subject} / best baseline with {mech}: {text}")
    return [*out, ""]


def section_details(results: Results, sc: Scenario) -> list[str]:
    plan = results.plan
    alpha = plan.alphas[0]
    out = ["<details><summary>Every policy, every metric (kv-transfer)</summary>", ""]
    policies = [p for p in plan.scenario_policies(sc, alpha) if p not in plan.roles.capacity_only]
    for name, title in DETAIL_METRICS:
        fmt = FORMATS.get(name, _seconds)
        rows = [
            [
                policy,
                *(
                    point_text(results, kv_cell(sc, alpha, policy), r, name, fmt)
                    for r in plan.rates(sc)
                ),
            ]
            for policy in policies
        ]
        out += [
            f"**{title}**",
            "",
            md_table(["policy", *(f"x{r:g}" for r in plan.rates(sc))], rows),
            "",
            caption(results, sc, alpha_label(alpha), KV_TRANSFER, plan.rates(sc)),
            "",
        ]
    return [*out, "</details>", ""]


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    key: str
    paper: str
    measured: dict[str, str]  # alpha label -> sentence
    values: dict[str, object]  # alpha label -> numbers behind the sentence


def claims(results: Results, sc: Scenario) -> list[Claim]:
    """The paper's claims next to what the runs of ``sc`` measured (calibrated alpha)."""
    plan, roles = results.plan, results.plan.roles
    baselines = all_baselines(results, sc)
    subject = roles.subject
    rows: dict[str, tuple[dict[str, str], dict[str, object]]] = {
        key: ({}, {}) for key in PAPER_CLAIMS
    }

    def put(key: str, label: str, text: str, value: object) -> None:
        rows[key][0][label] = text
        rows[key][1][label] = value

    def latency(name: str, ref: Sequence[str], alpha: float | None) -> tuple[object, str]:
        changes = []
        for rate in plan.rates(sc):
            v = versus(results, sc, alpha, rate, name, subject, ref)
            changes.append(None if v is None else v.change)
        return over_rates(changes)

    bid, rr = roles.balance_pair
    ablations = [n for n in roles.refinement if n not in (subject, "l4_static")]
    for alpha in plan.alphas:
        label = alpha_label(alpha)
        for key, name in (("e2e_mean", "e2e_mean_s"), ("e2e_p99", "e2e_p99_s")):
            value, text = latency(name, baselines, alpha)
            put(key, label, f"vs the best baseline at each rate: {text}", value)
        ratio, text = capacity_versus(results, sc, alpha, subject, baselines)
        put("capacity", label, text, ratio)
        lat_texts, cap_texts = [], []
        lat_values: dict[str, object] = {}
        cap_values: dict[str, object] = {}
        for other in ablations:
            value, text = latency("e2e_mean_s", [other], alpha)
            lat_texts.append(f"vs {other}: {text}")
            lat_values[other] = value
            ratio, text = capacity_versus(results, sc, alpha, subject, [other])
            cap_texts.append(f"vs {other}: {text}")
            cap_values[other] = ratio
        put("refine_latency", label, "; ".join(lat_texts) or NOTHING, lat_values)
        put("refine_capacity", label, "; ".join(cap_texts) or NOTHING, cap_values)
        changes: list[float | None] = []
        for rate in plan.rates(sc):
            a = results.point(kv_cell(sc, alpha, bid), rate, "output_tokens_cv")
            b = results.point(kv_cell(sc, alpha, rr), rate, "output_tokens_cv")
            ok = a is not None and b is not None and b.median > 0
            changes.append(a.median / b.median - 1.0 if ok and a and b else None)
        value, text = over_rates(changes)
        put("cv", label, f"{bid} vs {rr}: {text}", value)
    return [
        Claim(key=key, paper=PAPER_CLAIMS[key], measured=rows[key][0], values=rows[key][1])
        for key in PAPER_CLAIMS
    ]


def section_claims(results: Results) -> list[str]:
    plan = results.plan
    sc = plan.scenarios[0]
    labels = [alpha_label(a) for a in plan.alphas]
    rows = [
        [c.paper, *(c.measured.get(label, NOTHING) for label in labels)]
        for c in claims(results, sc)
    ]
    return [
        "## The paper's claims next to our measurements",
        "",
        f"Measured on the first scenario ({sc.name}), over its rate sweep; a change is "
        "(ours / reference - 1), negative = lower; capacity ratios compare the rate multipliers "
        "at which SLO attainment stays at the target overall and per length class, found on a "
        "geometric grid of step "
        f"{capacity_grid_step(plan.capacity_iterations):.3f}x ({plan.capacity_iterations} "
        "bisection steps): a ratio within one step is reported as a tie. "
        "The paper's setting is not fully known "
        "(docs/design/L4.md), so these are comparisons of direction and size, not replications.",
        "",
        md_table(["paper (claim)", *(f"measured, alpha={label}" for label in labels)], rows),
        "",
        caption(results, sc, "as in the columns", KV_TRANSFER, plan.rates(sc)),
        "",
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """One scenario against "How we will know it works" (issue 11)."""

    scenario: str
    premise: bool
    best_baseline: str | None
    capacity_ratio: float | None
    capacity_text: str
    e2e_change: float | None  # mean E2E at the best baseline's capacity, subject / baseline - 1
    p99_change: float | None
    at_capacity_text: str
    replay_ratio: float | None
    replay_text: str
    passed: bool | None  # None: not measured


def _at_capacity(
    results: Results, sc: Scenario, mechanism: str = KV_TRANSFER
) -> tuple[str | None, float | None, float | None, str]:
    """Subject vs the best baseline at that baseline's capacity: (name, mean change, p99
    change, text), medians over the seeds where both have a run there."""
    plan = results.plan
    found = best_baseline(plan, results.data.capacity, sc, mechanism)
    if found is None:
        return None, None, None, "not measured (no baseline capacity)"
    ref_cell, per_seed = found
    subject = kv_cell(sc, plan.alphas[0], plan.roles.subject, mechanism)
    pairs: dict[str, list[tuple[float, float]]] = {"e2e_mean_s": [], "e2e_p99_s": []}
    for seed, rate in per_seed.items():
        mine = results.data.records.get(plan.spec(subject, rate, seed).key_id())
        ref = results.data.records.get(plan.spec(ref_cell, rate, seed).key_id())
        if mine is None or ref is None:
            continue
        for name, out in pairs.items():
            a, b = metric(mine, name), metric(ref, name)
            if a is not None and b is not None and b > 0:
                out.append((a, b))
    if not pairs["e2e_mean_s"]:
        return ref_cell.policy, None, None, f"not measured (no {plan.roles.subject} run there)"

    def change(name: str) -> float | None:
        vals = pairs[name]
        if not vals:
            return None
        return statistics.median(a for a, _ in vals) / statistics.median(b for _, b in vals) - 1

    mean, p99 = change("e2e_mean_s"), change("e2e_p99_s")
    rate = statistics.median(per_seed.values())
    text = (
        f"at {ref_cell.policy}'s capacity (x{rate:.3g}, {len(pairs['e2e_mean_s'])} seeds): "
        f"mean E2E {NOTHING if mean is None else _change(mean)}, "
        f"p99 E2E {NOTHING if p99 is None else _change(p99)}"
    )
    return ref_cell.policy, mean, p99, text


def verdicts(results: Results) -> list[Verdict]:
    plan = results.plan
    alpha = plan.alphas[0]
    out = []
    for sc in plan.scenarios:
        baselines = all_baselines(results, sc)
        ratio, cap_text = capacity_versus(results, sc, alpha, plan.roles.subject, baselines)
        name, mean, p99, at_text = _at_capacity(results, sc)
        r_ratio, r_text = (None, "not measured")
        if REPLAY in plan.mechanisms(sc, plan.roles.subject, alpha):
            r_ratio, r_text = capacity_versus(
                results, sc, alpha, plan.roles.subject, baselines, REPLAY
            )
        passed: bool | None = None
        if ratio is not None and mean is not None:
            if sc.premise:
                passed = ratio >= 1.3 and mean <= -0.25 and (p99 is not None and p99 <= 0)
            else:
                passed = ratio >= 0.98 and mean <= 0.02
        out.append(
            Verdict(
                scenario=sc.name,
                premise=sc.premise,
                best_baseline=name,
                capacity_ratio=ratio,
                capacity_text=cap_text,
                e2e_change=mean,
                p99_change=p99,
                at_capacity_text=at_text,
                replay_ratio=r_ratio,
                replay_text=r_text,
                passed=passed,
            )
        )
    return out


def section_acceptance(results: Results) -> list[str]:
    rows = []
    for v in verdicts(results):
        target = (
            "capacity >= 1.3x, mean E2E <= -25%, p99 <= 0"
            if v.premise
            else "capacity >= 0.98x, mean E2E <= +2%"
        )
        verdict = NOTHING if v.passed is None else ("**met**" if v.passed else "not met")
        rows.append(
            [v.scenario, target, v.capacity_text, v.at_capacity_text, v.replay_text, verdict]
        )
    return [
        "## How we will know it works (issue 11): l4 against the best baseline",
        "",
        "Capacity with the per-class rule; the best baseline is the one with the highest median "
        "capacity among every baseline (fixed prefill/decode splits included); latencies at its "
        "capacity are measured on the same windows (seeds) at that baseline's own capacity. The "
        "replay column compares l4 with token replay against the best baseline under replay (a "
        "baseline that never migrates is unaffected by the mechanism).",
        "",
        md_table(
            [
                "scenario",
                "target",
                "capacity: l4 / best baseline",
                "at the best baseline's capacity",
                "with --migration replay",
                "verdict",
            ],
            rows,
        ),
        "",
        "\n\n".join(
            caption(results, sc, alpha_label(results.plan.alphas[0]), KV_TRANSFER, None)
            for sc in results.plan.scenarios
        ),
        "",
    ]


def section_curve(results: Results) -> list[str]:
    """L4's capacity advantage as alpha grows, per premise scenario."""
    plan = results.plan
    premise = [sc for sc in plan.scenarios if sc.premise]
    if not premise or not plan.capacity:
        return []
    out = [
        "## The heterogeneity question, as a curve",
        "",
        f"Capacity of `{plan.roles.subject}` over the best baseline among "
        f"{', '.join(b for b in plan.roles.curve if b in plan.roles.baselines)}, as the "
        "heterogeneity coefficient alpha goes from "
        f"0 through the calibrated table to constants: {PAPER_ALPHA:g} makes a 1 x 64K + 15 x "
        "100-token decode batch's attention 2x slower than a uniform batch of the same tokens "
        "(the paper's premise).",
        "",
    ]
    for sc in premise:
        rows = []
        for alpha in plan.scenario_alphas(sc):
            refs = [
                b
                for b in plan.roles.curve
                if b in plan.roles.baselines and results.has_in(sc, b, alpha)
            ]
            _, text = capacity_versus(results, sc, alpha, plan.roles.subject, refs)
            _, stage_text = capacity_versus(results, sc, alpha, plan.roles.subject, ["l4_bids"])
            rows.append([alpha_label(alpha), text, stage_text])
        out += [
            f"**{sc.name}**",
            "",
            md_table(["alpha", "l4 / best baseline", "l4 / l4_bids (one stage, same bids)"], rows),
            "",
            caption(results, sc, "as in the rows", KV_TRANSFER, None),
            "",
        ]
    return out


def _median_summary(results: Results, cell: Cell, rate: float) -> dict[str, object]:
    """A summary-shaped object of medians over seeds, for l4.report.plot_sweep."""

    def med(name: str) -> float | None:
        s = results.point(cell, rate, name)
        return None if s is None else s.median

    return {
        "e2e_s": {"mean": med("e2e_mean_s"), "p99": med("e2e_p99_s")},
        "ttft_s": {"mean": med("ttft_mean_s")},
        "tpot_s": {"mean": med("tpot_mean_s")},
        "goodput_requests_per_s": med("goodput_rps"),
    }


def write_plots(results: Results, assets: Path) -> dict[tuple[str, str], Path]:
    """Latency (and goodput) versus rate per scenario (kv-transfer), and per mechanism."""
    plan = results.plan
    alpha = plan.alphas[0]
    label = alpha_label(alpha)
    written: dict[tuple[str, str], Path] = {}
    for sc in plan.scenarios:
        rates = plan.rates(sc)
        swept = [p for p in plan.scenario_policies(sc, alpha) if p not in plan.roles.capacity_only]
        points = {
            policy: [(r, _median_summary(results, kv_cell(sc, alpha, policy), r)) for r in rates]
            for policy in swept
        }
        path = assets / f"{sc.name}.png"
        plot_sweep(
            path,
            points,
            "rate (x trace rate)",
            title=f"{sc.name}: {sc.num_instances} x {sc.profile}, alpha={label}, "
            f"median over seeds {', '.join(map(str, plan.seeds))}, "
            f"{plan.duration(sc):g} s cut",
        )
        written[(sc.name, "sweep")] = path
        movers = [p for p in swept if len(plan.mechanisms(sc, p, alpha)) > 1]
        if movers:
            mech_points = {
                f"{policy} ({mech})": [
                    (r, _median_summary(results, kv_cell(sc, alpha, policy, mech), r))
                    for r in rates
                ]
                for policy in movers
                for mech in plan.mechanisms(sc, policy, alpha)
            }
            path = assets / f"{sc.name}-mechanisms.png"
            plot_sweep(
                path,
                mech_points,
                "rate (x trace rate)",
                title=f"{sc.name}: migration mechanisms, alpha={label}",
            )
            written[(sc.name, "mechanisms")] = path
    return written


def sweep_sentence(results: Results, sc: Scenario) -> str:
    """Where the measured capacities fall in the sweep, so that a badly placed sweep shows."""
    plan = results.plan
    rates = plan.rates(sc)
    text = f"Rate sweep: {', '.join(f'x{r:g}' for r in rates)} of the trace's mean rate."
    alpha = plan.alphas[0]
    found = [
        (s.median, policy)
        for policy in plan.scenario_policies(sc, alpha)
        if (s := results.capacity(kv_cell(sc, alpha, policy))[0]) is not None
    ]
    if not found:
        return text
    (lo, lo_name), (hi, hi_name) = min(found), max(found)
    text += (
        f" Capacities (alpha={alpha_label(alpha)}, kv-transfer) range from x{lo:.3g} "
        f"({lo_name}) to x{hi:.3g} ({hi_name}); the sweep spans {min(rates) / hi:.2f}x to "
        f"{max(rates) / hi:.2f}x of the highest."
    )
    if max(rates) <= hi:
        text += " **The sweep does not go past the highest capacity.**"
    return text


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


def render_markdown(
    results: Results, meta: dict[str, object], plots: dict[tuple[str, str], Path], base: Path
) -> str:
    data, plan = results.data, results.plan
    lines = [
        "# Experiment results",
        "",
        f"Written by `{meta.get('command')}` from simulator runs; every number below is computed "
        "from those runs (nothing is typed in but the paper's claims). "
        f"Code: git `{meta.get('git')}`, src/l4 hash `{plan.code}`; Python {meta.get('python')} "
        f"on {meta.get('machine')}, {meta.get('jobs')} worker(s). This invocation simulated "
        f"{data.simulated} runs (the rest came from the run cache) in {data.wall_s:.0f} s.",
        "",
    ]
    if plan.quick:
        lines += [
            f"**Quick run** (`--quick`): {len(plan.rates(plan.scenarios[0]))} rates per scenario, "
            f"{len(plan.seeds)} seed(s), half of each scenario's window and "
            f"{plan.capacity_iterations} bisection steps. A smoke test of the suite, "
            "not the results: run without `--quick` for those.",
            "",
        ]
    lines += [
        f"Policies measured: {', '.join(f'`{p}`' for p in plan.policies)} (the ablations only in "
        f"{', '.join(sc.name for sc in plan.scenarios if sc.ablations) or 'no scenario'}; the "
        "fixed prefill/decode splits capacity only).",
        "",
    ]
    if plan.missing_policies:
        lines += [
            "**Not registered in this build, so not measured:** "
            f"{', '.join(f'`{p}`' for p in plan.missing_policies)}. Comparisons that need "
            "them say so.",
            "",
        ]
    lines += [
        "Conventions: medians over seeds (windows of the trace, or ServeGen's times of day), "
        "with [min–max] where seeds differ; a change is (policy / reference - 1), negative = "
        "lower; the best baseline is chosen per metric and rate in the sweep tables. Goodput "
        "follows docs/design/EVALUATION.md (TTFT and TPOT within "
        f"{plan.slo_scale:g}x each request's unloaded values); capacity is "
        "`l4.sim.capacity.find_capacity` on the rate multiplier with the per-class rule: SLO "
        f"attainment >= {plan.goodput_target:.0%} overall and in every length class (< 2K, 2K-8K, "
        "8K-32K, >= 32K total tokens) with at least 20 requests.",
        "",
    ]
    lines += section_acceptance(results)
    lines += section_curve(results)
    lines += section_claims(results)
    for i, sc in enumerate(plan.scenarios, 1):
        lines += [f"## Scenario {i}: {sc.title}", ""]
        lines += [sweep_sentence(results, sc), ""]
        plot = plots.get((sc.name, "sweep"))
        if plot is not None:
            lines += [f"![{sc.name}]({_relative(plot, base)})", ""]
        for alpha in plan.alphas:
            lines += section_versus(results, sc, alpha)
        lines += section_capacity(results, sc)
        lines += section_ablations(results, sc)
        lines += section_balance(results, sc)
        lines += section_mechanisms(results, sc)
        plot = plots.get((sc.name, "mechanisms"))
        if plot is not None:
            lines += [f"![{sc.name} mechanisms]({_relative(plot, base)})", ""]
        lines += section_details(results, sc)
    lines += section_notes(results)
    return "\n".join(lines).rstrip() + "\n"


def _timestamped(data: SuiteData, sc: Scenario) -> bool:
    for record in data.records.values():
        key, workload = record.get("key"), record.get("workload")
        if isinstance(key, dict) and isinstance(workload, dict) and key["scenario"] == sc.name:
            return bool(workload.get("timestamped"))
    return False


def section_notes(results: Results) -> list[str]:
    data, plan = results.data, results.plan
    out = ["## Notes", ""]
    timestamped = [sc.name for sc in plan.scenarios if _timestamped(data, sc)]
    if timestamped and len(plan.seeds) > 1:
        out.append(
            f"* {', '.join(timestamped)} replay the trace's own timestamps: seed k replays the "
            f"trace from {WINDOW_STRIDE:g} x k (mod 1) of its span on, wrapping around at its "
            "end (`l4 simulate --offset`), so seeds are different windows of the trace; where "
            "the rate multiplier compresses the whole trace into the cut, they are the same "
            "requests in another order. Traces without timestamps draw Poisson arrivals from "
            "the seed."
        )
    out.append(
        "* Latencies are over finished requests; the `unfinished requests` tables show where "
        "a run left requests unfinished at the end of its drain window."
    )
    failed_searches = [
        (cell, seed, found.error)
        for (cell, seed), found in data.capacity.items()
        if found.error is not None
    ]
    if data.failures or failed_searches:
        out += ["", f"### Failed runs ({len(data.failures)}) and capacity searches", ""]
        out += [f"* `{label}`: {error}" for label, error in data.failures[:100]]
        if len(data.failures) > 100:
            out.append(f"* ... and {len(data.failures) - 100} more (see results.json)")
        out += [
            f"* capacity {cell.scenario.name} {cell.policy} alpha={alpha_label(cell.alpha)} "
            f"{cell.mechanism} seed={seed}: {error}"
            for cell, seed, error in failed_searches[:100]
        ]
    return [*out, ""]


METRICS_ALL: tuple[str, ...] = (*METRICS, *WORKLOAD_METRICS)
JSON_PER_SEED = (
    "e2e_mean_s",
    "e2e_p99_s",
    "ttft_mean_s",
    "tpot_mean_s",
    "slo_attainment",
    "goodput_rps",
    "output_tokens_cv",
    "migrations",
    "unfinished",
)


def results_json(results: Results, meta: dict[str, object]) -> dict[str, object]:
    data, plan = results.data, results.plan
    scenarios = []
    for sc in plan.scenarios:
        sweep, capacity = [], []
        for cell in plan.cells():
            if cell.scenario != sc:
                continue
            head = {
                "alpha": alpha_label(cell.alpha),
                "mechanism": cell.mechanism,
                "policy": cell.policy,
            }
            for rate in plan.rates(sc) if plan.swept(cell) else ():
                metrics = {
                    name: s.as_json()
                    for name in (*METRICS_ALL,)
                    if (s := results.point(cell, rate, name)) is not None
                }
                per_seed = {name: results.values(cell, rate, name) for name in JSON_PER_SEED}
                sweep.append({**head, "rate_scale": rate, "metrics": metrics, "per_seed": per_seed})
            if plan.capacity:
                scale, rps = results.capacity(cell)
                capacity.append(
                    {
                        **head,
                        "rate_scale": None if scale is None else scale.as_json(),
                        "requests_per_s": None if rps is None else rps.as_json(),
                        "per_seed": [
                            None
                            if found is None
                            else {
                                "seed": seed,
                                "rate_scale": found.rate_scale,
                                "requests_per_s": found.requests_per_s,
                                "probes": [
                                    {"rate_scale": r, "slo_attainment": a, "failed": list(f)}
                                    for r, a, f in found.probes
                                ],
                                "error": found.error,
                            }
                            for seed, found in zip(
                                plan.seeds, results.capacity_runs(cell), strict=True
                            )
                        ],
                    }
                )
        scenarios.append(
            {
                "name": sc.name,
                "title": sc.title,
                "trace": sc.trace,
                "profile": sc.profile,
                "instances": sc.num_instances,
                "rate_scales": list(plan.rates(sc)),
                "capacity_start_scale": sc.capacity_start_scale,
                "duration_s": plan.duration(sc),
                "premise": sc.premise,
                "alphas": [alpha_label(a) for a in plan.scenario_alphas(sc)],
                "sweep": sweep,
                "capacity": capacity,
            }
        )
    first = plan.scenarios[0]
    return {
        "meta": {
            **meta,
            "quick": plan.quick,
            "seeds": list(plan.seeds),
            "alphas": [alpha_label(a) for a in plan.alphas],
            "duration_s": plan.duration_s,
            "curve_alphas": list(plan.curve_alphas),
            "store_bandwidth_bytes_per_s": STORE_BANDWIDTH_BYTES_PER_S,
            "goodput_target": plan.goodput_target,
            "slo_scale": plan.slo_scale,
            "capacity_iterations": plan.capacity_iterations,
            "policies": list(plan.policies),
            "missing_policies": list(plan.missing_policies),
            "roles": {
                "subject": plan.roles.subject,
                "baselines": list(plan.roles.baselines),
                "balance_pair": list(plan.roles.balance_pair),
                "refinement": list(plan.roles.refinement),
                "migrating": list(plan.roles.migrating),
                "ablations": list(plan.roles.ablations),
                "curve": list(plan.roles.curve),
            },
            "simulated_runs": data.simulated,
            "wall_s": data.wall_s,
        },
        "claims": {
            "scenario": first.name,
            "rows": [
                {"key": c.key, "paper": c.paper, "measured": c.measured, "values": c.values}
                for c in claims(results, first)
            ],
        },
        "verdicts": [
            {
                "scenario": v.scenario,
                "premise": v.premise,
                "best_baseline": v.best_baseline,
                "capacity_ratio": v.capacity_ratio,
                "e2e_mean_change_at_baseline_capacity": v.e2e_change,
                "e2e_p99_change_at_baseline_capacity": v.p99_change,
                "replay_capacity_ratio": v.replay_ratio,
                "passed": v.passed,
            }
            for v in verdicts(results)
        ],
        "scenarios": scenarios,
        "failures": [{"run": label, "error": error} for label, error in data.failures],
    }


def write_report(
    data: SuiteData, out: Path, meta: dict[str, object], *, plots: bool = True
) -> list[Path]:
    """results.md at ``out``; plots (unless ``plots`` is False) and results.json in the folder
    of the same name."""
    results = Results(data)
    assets = out.with_suffix("")
    pngs = write_plots(results, assets) if plots else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(results, meta, pngs, out.parent), encoding="utf-8")
    json_path = assets / "results.json"
    # Compact: the full suite has thousands of points. Strict (no NaN) and key-sorted like
    # l4.report.write_json, so the same runs give the same bytes.
    text = json.dumps(
        results_json(results, meta), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(text + "\n", encoding="utf-8")
    return [out, json_path, *pngs.values()]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.out.suffix != ".md":
            raise ValidationError(f"--out must name a .md file, got {args.out}")
        plan = build_plan(args)
        if plan.missing_policies:
            print(
                f"note: not registered, left out: {', '.join(plan.missing_policies)}",
                file=sys.stderr,
            )
        cache = RunCache(None if args.no_cache else args.cache)
        if cache.loaded:
            print(f"cache: {cache.loaded} runs in {args.cache}", file=sys.stderr)
        timeout_s = args.run_timeout or None
        data = execute(plan, cache, args.jobs, Progress(plan, args.jobs), timeout_s=timeout_s)
        command = shlex.join(["python", "benchmarks/experiments.py", *(argv or sys.argv[1:])])
        meta = {
            "command": command,
            "git": git_describe(),
            "code_version": plan.code,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "jobs": args.jobs,
            "run_timeout_s": timeout_s,
        }
        written = write_report(data, args.out, meta)
    except L4Error as exc:
        print(f"experiments.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("experiments.py: interrupted (finished runs are cached)", file=sys.stderr)
        return 130
    print(
        f"{data.simulated} runs simulated, {len(data.records)} in the report, "
        f"{len(data.failures)} failed, {data.wall_s:.0f} s",
        file=sys.stderr,
    )
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
