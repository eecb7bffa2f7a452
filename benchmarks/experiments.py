"""The experiment suite (issue 3): the scenarios of docs/design/EVALUATION.md in the simulator.

For each scenario (Mooncake on 16 x Llama-3.2-3B and on 16 x Llama-3.1-8B, the Azure conversation
trace, ShareGPT with Poisson arrivals) it sweeps the rate from light load to past saturation, for
every registered policy of the baseline and L4 families, several seeds, the calibrated alpha and
alpha = 0, and both migration mechanisms for the migrating policies where the scenario asks for
them; it bisects each policy's capacity (goodput >= 90%). It writes docs/results.md (every number
in it computed from the runs), plots under docs/results/ and docs/results/results.json. Runs are
cached in a JSON-lines file keyed by run and code version, so a rerun resumes. Usage:

    python benchmarks/experiments.py [--quick] [--jobs N] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _experiments_lib import (
    ALPHAS,
    KV_TRANSFER,
    METRICS,
    ROOT,
    SCENARIOS,
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
    code_version,
    execute,
    git_describe,
    metric,
    stat,
)
from l4.cliargs import OneLineParser, non_negative_float, positive_float, positive_int
from l4.errors import L4Error, UnknownNameError, ValidationError
from l4.plots import plot_sweep
from l4.policies.base import policy_names
from l4.report import format_seconds

DEFAULT_OUT = ROOT / "docs" / "results.md"
DEFAULT_CACHE = ROOT / "out" / "experiments" / "runs.jsonl"
FULL = {"seeds": 3, "duration_s": 1200.0, "capacity_iterations": 5}
QUICK = {"seeds": 1, "duration_s": 300.0, "capacity_iterations": 3}
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
        help=f"3 rates per scenario, {QUICK['seeds']} seed, {QUICK['duration_s']:g} s cut, "
        f"{QUICK['capacity_iterations']} bisection steps (default: 3 seeds, 1200 s, 5 steps)",
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
    p.add_argument("--duration", type=positive_float, help="keep arrivals in the first S s")
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
    registered = set(policy_names())
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
        duration_s=float(args.duration or preset["duration_s"]),
        quick=bool(args.quick),
        capacity=not args.no_capacity,
        capacity_iterations=int(args.capacity_iterations or preset["capacity_iterations"]),
        goodput_target=GOODPUT_TARGET,
        slo_scale=SLO_SCALE,
        code=code_version(),
    )


class Progress:
    """One line per finished run on stderr, with a running estimate of the time left."""

    def __init__(self, plan: Plan, jobs: int) -> None:
        self.jobs = jobs
        self.t0 = time.perf_counter()
        searches = len(plan.cells()) * len(plan.seeds) if plan.capacity else 0
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
    out.extend(line(row) for row in rows)
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
        f"duration=arrivals in the first {plan.duration_s:g} s after rate scaling ({span}) · "
        f"migration={mechanism} · SLO: TTFT and TPOT within {plan.slo_scale:g}x unloaded, "
        f"goodput target {plan.goodput_target:.0%}*"
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
    if not results.has(subject):
        return None
    mine = results.point(kv_cell(sc, alpha, subject, mechanism), rate, name)
    candidates = [
        (s, ref)
        for ref in references
        if results.has(ref)
        and (s := results.point(kv_cell(sc, alpha, ref, mechanism), rate, name)) is not None
    ]
    if mine is None or not candidates:
        return None
    best, best_name = min(candidates, key=lambda c: c[0].median)
    unfinished = _unfinished(results, kv_cell(sc, alpha, subject, mechanism), rate) or (
        _unfinished(results, kv_cell(sc, alpha, best_name, mechanism), rate)
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
    if not results.has(subject):
        return None, f"not measured ({subject} not registered)"
    mine, _ = results.capacity(kv_cell(sc, alpha, subject, mechanism))
    refs = [
        (s, ref)
        for ref in references
        if results.has(ref)
        and (s := results.capacity(kv_cell(sc, alpha, ref, mechanism))[0]) is not None
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
    baselines = [b for b in roles.baselines if results.has(b)]
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


def section_capacity(results: Results, sc: Scenario) -> list[str]:
    plan = results.plan
    out = [f"#### Capacity (largest rate with SLO attainment >= {plan.goodput_target:.0%})", ""]
    if not plan.capacity:
        return [*out, "Not measured (--no-capacity).", ""]
    header = ["policy"]
    for alpha in plan.alphas:
        header += [f"capacity, alpha={alpha_label(alpha)}", "req/s"]
    rows = []
    for policy in plan.policies:
        row = [policy]
        for alpha in plan.alphas:
            cell = kv_cell(sc, alpha, policy)
            row += [capacity_text(results, cell), fmt_stat(results.capacity(cell)[1], _plain)]
        rows.append(row)
    out += [md_table(header, rows), ""]
    out += [caption(results, sc, "as in the columns", KV_TRANSFER, None), ""]
    roles = plan.roles
    baselines = [b for b in roles.baselines if results.has(b)]
    for alpha in plan.alphas:
        _, text = capacity_versus(results, sc, alpha, roles.subject, baselines)
        out.append(f"* {roles.subject} / best baseline, alpha={alpha_label(alpha)}: {text}")
    out.append("")
    return out


def section_balance(results: Results, sc: Scenario) -> list[str]:
    plan = results.plan
    bid, rr = plan.roles.balance_pair
    out = [
        f"#### Balance: output-token CV inside groups, {bid} (bid-ask) vs {rr} (round robin)",
        "",
    ]
    missing = _missing_note(results, [bid, rr])
    if missing:
        return [*out, missing, ""]
    fmt = FORMATS["output_tokens_cv"]
    for alpha in plan.alphas:
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
            f"**alpha={alpha_label(alpha)}**",
            "",
            md_table(["rate", bid, rr, f"change of {bid}"], rows),
            "",
            caption(results, sc, alpha_label(alpha), KV_TRANSFER, plan.rates(sc)),
            "",
        ]
    return out


def section_refinement(results: Results, sc: Scenario) -> list[str]:
    names = results.plan.roles.refinement
    return section_ablation(results, sc, f"Refinement ablation: {', '.join(names)}", names)


def section_staging(results: Results, sc: Scenario) -> list[str]:
    names = results.plan.roles.staging
    title = f"Staging ablation: {' vs '.join(names)} (one stage, the same bids)"
    return section_ablation(results, sc, title, names)


def section_ablation(results: Results, sc: Scenario, title: str, names: Sequence[str]) -> list[str]:
    """Mean E2E and capacity of ``names``, each against the first of them."""
    plan = results.plan
    out = [f"#### {title}", ""]
    present = [n for n in names if results.has(n)]
    missing = _missing_note(results, names)
    if missing:
        out += [missing, ""]
    if len(present) < 2:
        return out
    first = present[0]
    for alpha in plan.alphas:
        rows = []
        for policy in present:
            row = [policy]
            changes: list[float | None] = []
            for rate in plan.rates(sc):
                s = results.point(kv_cell(sc, alpha, policy), rate, "e2e_mean_s")
                ref = results.point(kv_cell(sc, alpha, first), rate, "e2e_mean_s")
                row.append(point_text(results, kv_cell(sc, alpha, policy), rate, "e2e_mean_s"))
                ok = s is not None and ref is not None and s.median > 0
                changes.append(ref.median / s.median - 1.0 if ok and ref and s else None)
            cap = kv_cell(sc, alpha, policy)
            row.append(capacity_text(results, cap) if plan.capacity else NOTHING)
            row.append(NOTHING if policy == first else over_rates(changes)[1])
            rows.append(row)
        header = [
            "policy",
            *(f"mean E2E x{r:g}" for r in plan.rates(sc)),
            "capacity",
            f"{first} vs this policy (mean E2E)",
        ]
        out += [
            f"**alpha={alpha_label(alpha)}**",
            "",
            md_table(header, rows),
            "",
            caption(results, sc, alpha_label(alpha), KV_TRANSFER, plan.rates(sc)),
            "",
        ]
    return out


def section_mechanisms(results: Results, sc: Scenario) -> list[str]:
    plan = results.plan
    if not sc.extra_mechanisms:
        return []
    mechanisms = (KV_TRANSFER, *sc.extra_mechanisms)
    out = [f"#### Migration mechanisms: {', '.join(mechanisms)}", ""]
    movers = [p for p in plan.policies if p in plan.roles.migrating]
    if not movers:
        return [*out, "Not measured: no migrating policy registered.", ""]
    out += [
        "Cells: mean E2E / p99 E2E, migrations (medians over seeds). Non-migrating policies "
        "are unaffected by the mechanism and appear only in the kv-transfer tables.",
        "",
    ]
    for alpha in plan.alphas:
        rows = []
        for policy in movers:
            for mech in mechanisms:
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
        out += [
            f"**alpha={alpha_label(alpha)}**",
            "",
            md_table(header, rows),
            "",
            caption(results, sc, alpha_label(alpha), ", ".join(mechanisms), plan.rates(sc)),
            "",
        ]
    return out


def section_details(results: Results, sc: Scenario) -> list[str]:
    plan = results.plan
    out = ["<details><summary>Every policy, every metric (kv-transfer)</summary>", ""]
    for alpha in plan.alphas:
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
                for policy in plan.policies
            ]
            out += [
                f"**{title}, alpha={alpha_label(alpha)}**",
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
    """The paper's claims next to what the runs of ``sc`` measured, for every alpha."""
    plan, roles = results.plan, results.plan.roles
    baselines = [b for b in roles.baselines if results.has(b)]
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
        "at which SLO attainment stays at the target, found on a geometric grid of step "
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


def section_summary(results: Results) -> list[str]:
    plan, roles = results.plan, results.plan.roles
    baselines = [b for b in roles.baselines if results.has(b)]
    rows = []
    for sc in plan.scenarios:
        for alpha in plan.alphas:
            row = [sc.name, alpha_label(alpha)]
            for name in ("e2e_mean_s", "e2e_p99_s"):
                changes = []
                for rate in plan.rates(sc):
                    v = versus(results, sc, alpha, rate, name, roles.subject, baselines)
                    changes.append(None if v is None else v.change)
                row.append(over_rates(changes)[1])
            row.append(capacity_versus(results, sc, alpha, roles.subject, baselines)[1])
            rows.append(row)
    return [
        f"## Summary: {roles.subject} vs the best baseline, every scenario",
        "",
        md_table(
            ["scenario", "alpha", "mean E2E change", "p99 E2E change", "capacity ratio"], rows
        ),
        "",
        "\n\n".join(
            caption(results, sc, "as in the rows", KV_TRANSFER, plan.rates(sc))
            for sc in plan.scenarios
        ),
        "",
    ]


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
    """Latency (and goodput) versus rate: per scenario and alpha, and per mechanism."""
    plan = results.plan
    written: dict[tuple[str, str], Path] = {}
    for sc in plan.scenarios:
        rates = plan.rates(sc)
        for alpha in plan.alphas:
            label = alpha_label(alpha)
            points = {
                policy: [
                    (r, _median_summary(results, kv_cell(sc, alpha, policy), r)) for r in rates
                ]
                for policy in plan.policies
            }
            path = assets / f"{sc.name}-alpha-{label}.png"
            plot_sweep(
                path,
                points,
                "rate (x trace rate)",
                title=f"{sc.name}: {sc.num_instances} x {sc.profile}, alpha={label}, "
                f"median over seeds {', '.join(map(str, plan.seeds))}, "
                f"{plan.duration_s:g} s cut",
            )
            written[(sc.name, label)] = path
            movers = [p for p in plan.policies if p in plan.roles.migrating]
            if sc.extra_mechanisms and movers:
                mech_points = {
                    f"{policy} ({mech})": [
                        (r, _median_summary(results, kv_cell(sc, alpha, policy, mech), r))
                        for r in rates
                    ]
                    for policy in movers
                    for mech in (KV_TRANSFER, *sc.extra_mechanisms)
                }
                path = assets / f"{sc.name}-mechanisms-alpha-{label}.png"
                plot_sweep(
                    path,
                    mech_points,
                    "rate (x trace rate)",
                    title=f"{sc.name}: migration mechanisms, alpha={label}",
                )
                written[(sc.name, f"mechanisms-{label}")] = path
    return written


def sweep_sentence(results: Results, sc: Scenario) -> str:
    """Where the measured capacities fall in the sweep, so that a badly placed sweep shows."""
    plan = results.plan
    rates = plan.rates(sc)
    text = f"Rate sweep: {', '.join(f'x{r:g}' for r in rates)} of the trace's mean rate."
    alpha = plan.alphas[0]
    found = [
        (s.median, policy)
        for policy in plan.policies
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
            "**Quick run** (`--quick`): 3 rates per scenario, "
            f"{len(plan.seeds)} seed(s), a {plan.duration_s:g} s cut and "
            f"{plan.capacity_iterations} bisection steps. A smoke test of the suite, "
            "not the results: run without `--quick` for those.",
            "",
        ]
    lines += [
        f"Policies measured: {', '.join(f'`{p}`' for p in plan.policies)}.",
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
        "Conventions: medians over seeds, with [min–max] where seeds differ; a change is "
        "(policy / reference - 1), negative = lower; the best baseline is chosen per metric and "
        "rate. Goodput follows docs/design/EVALUATION.md (TTFT and TPOT within "
        f"{plan.slo_scale:g}x each request's unloaded values); capacity is "
        "`l4.sim.capacity.find_capacity` on the rate multiplier.",
        "",
    ]
    lines += section_claims(results)
    lines += section_summary(results)
    for i, sc in enumerate(plan.scenarios, 1):
        lines += [f"## Scenario {i}: {sc.title}", ""]
        lines += [sweep_sentence(results, sc), ""]
        for alpha in plan.alphas:
            plot = plots.get((sc.name, alpha_label(alpha)))
            if plot is not None:
                lines += [
                    f"![{sc.name}, alpha={alpha_label(alpha)}]({_relative(plot, base)})",
                    "",
                ]
        for alpha in plan.alphas:
            lines += section_versus(results, sc, alpha)
        lines += section_capacity(results, sc)
        lines += section_balance(results, sc)
        lines += section_refinement(results, sc)
        lines += section_staging(results, sc)
        lines += section_mechanisms(results, sc)
        for alpha in plan.alphas:
            plot = plots.get((sc.name, f"mechanisms-{alpha_label(alpha)}"))
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
            for rate in plan.rates(sc):
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
                                "probes": [list(p) for p in found.probes],
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
