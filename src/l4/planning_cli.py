"""`l4 plan`: the I/O edge of the planner (reads a trace or histogram, prints and writes a plan).

``add_plan_parser(subparsers)`` adds the subcommand; ``run_plan(args)`` runs it and returns the
exit code. Errors are raised as ``L4Error`` for the main CLI to map to exit codes. The JSON written
by ``--json`` is ``Plan.to_dict()``: ``{"planning_time_s", "cost", "stages": [{"lo_tokens",
"hi_tokens", "instances", "ttft_s", "tpot_s"}]}`` with ``hi_tokens`` null for the last stage (and
``cost`` null when no partition is sustainable).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from l4.core.grid import DEFAULT_MIN_TOKENS, DEFAULT_SUBSTEPS_PER_OCTAVE, exponential_grid
from l4.core.planner import Plan, plan_stages
from l4.core.qoe import MECHANISMS, MigrationModel, StageModel
from l4.core.summary import WorkloadSummary, summarize_workload, summary_from_histogram
from l4.costmodel.profile import available_profiles, load_profile
from l4.errors import ValidationError, WorkloadError
from l4.instance.config import InstanceConfig
from l4.workload import WorkloadSpec, build_workload, bundled_traces


def add_plan_parser(subparsers: Any) -> None:
    """Add ``plan`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "plan",
        help="compute L4's stage plan (length ranges and instances per stage) for a workload",
        description="Summarise a trace (or a length histogram) on the exponential length grid and "
        "find the QoE-best partition of the instances into length stages (DP + greedy merge).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--trace",
        default="mooncake",
        help=f"bundled trace ({', '.join(bundled_traces())}) or a trace file (default: "
        "%(default)s)",
    )
    src.add_argument("--histogram", type=Path, help="an l4-length-histogram JSON file instead")
    p.add_argument(
        "--profile",
        default="h100-llama-3.2-3b",
        help=f"{', '.join(available_profiles())} or a JSON path (default: %(default)s)",
    )
    p.add_argument("--instances", type=int, default=16, help="default: %(default)s")
    p.add_argument("--rate-scale", type=float, help="multiply the arrival rate (default: 1)")
    p.add_argument("--duration", type=float, help="use only the first seconds of the trace")
    p.add_argument(
        "--substeps-per-octave",
        type=int,
        default=DEFAULT_SUBSTEPS_PER_OCTAVE,
        help="candidate boundaries per doubling of length (default: %(default)s)",
    )
    p.add_argument(
        "--min-boundary",
        type=int,
        default=DEFAULT_MIN_TOKENS,
        help="smallest candidate boundary in tokens (default: %(default)s)",
    )
    p.add_argument("--migration", choices=MECHANISMS, default="kv-transfer")
    p.add_argument(
        "--kv-store-gbps",
        type=float,
        help="with --migration replay: contexts load from a shared KV store at this many GB/s",
    )
    p.add_argument("--alpha", type=float, help="override the heterogeneity coefficient alpha")
    p.add_argument("--json", type=Path, help="write the plan as JSON here")


def _summary(args: argparse.Namespace, max_context_tokens: int) -> WorkloadSummary:
    grid = exponential_grid(
        max_context_tokens,
        substeps_per_octave=args.substeps_per_octave,
        min_tokens=args.min_boundary,
    )
    if args.histogram is not None:
        try:
            doc = json.loads(Path(args.histogram).read_text())
        except (OSError, ValueError) as exc:
            raise WorkloadError(f"cannot read histogram {args.histogram}: {exc}") from exc
        summary = summary_from_histogram(grid, doc)
        return summary if args.rate_scale is None else summary.scaled(args.rate_scale)
    workload = build_workload(
        WorkloadSpec(
            trace=args.trace,
            max_context_tokens=max_context_tokens,
            rate_scale=args.rate_scale,
            duration_s=args.duration,
        )
    )
    return summarize_workload(grid, workload)


def compute_plan(args: argparse.Namespace) -> Plan:
    """Everything ``run_plan`` does except printing and writing."""
    if args.instances < 1:
        raise ValidationError(f"--instances must be >= 1, got {args.instances}")
    profile = load_profile(args.profile).with_overrides(alpha=args.alpha)
    summary = _summary(args, profile.model.max_context_tokens)
    model = StageModel(
        profile,
        instance=InstanceConfig.from_profile(profile),
        migration=MigrationModel(
            mechanism=args.migration,
            kv_store_bandwidth_bytes_per_s=(
                None if args.kv_store_gbps is None else args.kv_store_gbps * 1e9
            ),
        ),
    )
    return plan_stages(summary, model, args.instances)


def _fmt_s(value: float) -> str:
    if value == float("inf"):
        return "inf"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def print_plan(plan: Plan, console: Console) -> None:
    table = Table(title="L4 stage plan")
    for name in ("stage", "length range (tokens)", "instances", "TTFT", "TPOT", "cost (s/s)"):
        table.add_column(name, justify="right")
    for k, s in enumerate(plan.stages):
        hi = "inf" if s.hi_tokens is None else f"{s.hi_tokens:,}"
        table.add_row(
            str(k),
            f"[{s.lo_tokens:,}, {hi})",
            str(s.num_instances),
            _fmt_s(s.ttft_s),
            _fmt_s(s.tpot_s),
            f"{s.cost:.4g}",
        )
    console.print(table)
    state = "" if plan.feasible else " [bold red](no sustainable plan: overloaded)[/]"
    console.print(
        f"total QoE cost {plan.cost:.4g} s/s{state}; planned in {plan.planning_time_s * 1e3:.2f} ms"
    )


def run_plan(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``l4 plan``: print the stages and planning time, write ``--json``; 0 on success."""
    plan = compute_plan(args)
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    print_plan(plan, console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return 0
