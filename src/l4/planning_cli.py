"""`l4 plan`: the I/O edge of the planner (reads a trace or histogram, prints and writes a plan).

``add_plan_parser(subparsers)`` adds the subcommand; ``run_plan(args)`` runs it and returns the
exit code. Errors are raised as ``L4Error`` for the main CLI to map to exit codes. The JSON written
by ``--json`` is ``Plan.to_dict()`` plus what it was planned for: ``{"config": {"trace",
"histogram", "rate", "rate_scale", "rate_source", "instances", "profile", "alpha", "migration"},
"planning_time_s", "cost", "block_instances", "stages": [{"lo_tokens", "hi_tokens", "instances",
"ttft_s", "tpot_s"}]}`` with ``hi_tokens`` null for the last stage (and ``cost`` null when no
partition is sustainable); ``block_instances`` is 1 when the partition was searched instance by
instance, q > 1 when in blocks of q (fleets above 64). The arrival rate follows ``l4.runrate``,
the rule ``l4 simulate`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from l4.cliargs import add_profile_options, check_output_file, to_stdout, write_output
from l4.core.grid import DEFAULT_MIN_TOKENS, DEFAULT_SUBSTEPS_PER_OCTAVE, exponential_grid
from l4.core.migration import MECHANISMS, MigrationModel
from l4.core.planner import MAX_PLAN_INSTANCES, Plan, check_fleet_size, plan_stages
from l4.core.qoe import StageModel
from l4.core.summary import WorkloadSummary, summarize_workload, summary_from_histogram
from l4.costmodel.profile import load_profile
from l4.errors import WorkloadError
from l4.instance.config import InstanceConfig
from l4.runrate import DEMO_RATE_SCALE, choose_rate, rate_caption, rate_fields
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
    add_profile_options(p, default="h100-llama-3.2-3b", environ=os.environ)
    p.add_argument(
        "--instances",
        type=int,
        default=16,
        help=f"instances to plan, 1..{MAX_PLAN_INSTANCES} (default: %(default)s)",
    )
    p.add_argument(
        "--rate-scale",
        type=float,
        help="multiply the arrival rate (default: as `l4 simulate`: "
        f"x{DEMO_RATE_SCALE:g} for a bundled trace, else 1: a trace file is planned at its "
        "recorded rate, a histogram at its rate_rps)",
    )
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
    p.add_argument("--json", type=Path, help="write the plan as JSON here ('-': standard output)")


def _summary(
    args: argparse.Namespace, max_context_tokens: int
) -> tuple[WorkloadSummary, dict[str, object]]:
    """The workload summary to plan for, and the rate fields of the report's ``config``."""
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
        scale = 1.0 if args.rate_scale is None else float(args.rate_scale)
        summary = summary if args.rate_scale is None else summary.scaled(scale)
        why = "--rate-scale" if args.rate_scale is not None else "default"
        return summary, {
            "rate": round(float(summary.arrivals.sum()) / summary.duration_s, 6),
            "rate_scale": scale,
            "rate_source": f"histogram rate_rps x{scale:g} ({why})",
        }
    rate = choose_rate(args.trace, rate_rps=None, rate_scale=args.rate_scale)
    workload = build_workload(
        WorkloadSpec(
            trace=args.trace,
            max_context_tokens=max_context_tokens,
            rate_scale=rate.rate_scale,
            duration_s=args.duration,
        )
    )
    return summarize_workload(grid, workload), rate_fields(rate, workload)


def compute_plan(args: argparse.Namespace) -> tuple[Plan, dict[str, object]]:
    """Everything ``run_plan`` does except printing and writing: the plan and the ``config``
    that describes what it was planned for."""
    check_fleet_size(args.instances)
    profile = load_profile(args.profile, user_dir=args.profiles_dir).with_overrides(
        alpha=args.alpha
    )
    summary, rate = _summary(args, profile.model.max_context_tokens)
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
    config: dict[str, object] = {
        "trace": None if args.histogram is not None else args.trace,
        "histogram": None if args.histogram is None else str(args.histogram),
        **rate,
        "instances": args.instances,
        "profile": profile.name,
        "alpha": "profile" if args.alpha is None else args.alpha,
        "migration": args.migration,
    }
    return plan_stages(summary, model, args.instances), config


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
    search = (
        ""
        if plan.block_instances == 1
        else f" (partition searched in blocks of {plan.block_instances} instances, split exact)"
    )
    console.print(
        f"total QoE cost {plan.cost:.4g} s/s{state}; planned in "
        f"{plan.planning_time_s * 1e3:.2f} ms{search}"
    )


def run_plan(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``l4 plan``: print the stages, the rate planned for and the planning time; write
    ``--json`` (``-``: standard output, and the table goes to standard error)."""
    if args.json is not None:
        check_output_file("--json", args.json)
    plan, config = compute_plan(args)
    if to_stdout(args.json):
        console = Console(stderr=True)
    elif console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    print_plan(plan, console)
    source = config["trace"] or config["histogram"]
    console.print(f"planned for {source} at {rate_caption(config)}", highlight=False)
    if args.json is not None:
        write_output(args.json, json.dumps({"config": config, **plan.to_dict()}, indent=2) + "\n")
    return 0
