"""Simulator speed: the full one-hour Mooncake conversation trace on 16 x h100-llama-3.2-3b.

Target (issue 2): under 60 s of wall time per policy run on one CPU core. Prints the figures and
writes docs/benchmarks/sim_speed.{json,md}. Usage:

    python benchmarks/sim_speed.py [--repeats 3] [--policies round_robin,least_load]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.instance import InstanceConfig
from l4.metrics import SloConfig
from l4.sim.runner import SimConfig, run_policy
from l4.workload import WorkloadSpec, build_workload

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", default="round_robin,least_load")
    parser.add_argument("--profile", default="h100-llama-3.2-3b")
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument(
        "--num-requests", type=int, default=None, help="first N requests only (a smoke run)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    workload = build_workload(
        WorkloadSpec(
            trace="mooncake",
            max_context_tokens=profile.model.max_context_tokens,
            num_requests=args.num_requests,
        )
    )
    cfg = SimConfig(
        profile=profile,
        instance_config=InstanceConfig.from_profile(profile),
        num_instances=args.instances,
        migration=MigrationConfig(),
        slo=SloConfig(),
        seed=0,
    )
    rows = []
    for policy in args.policies.split(","):
        walls, events, steps = [], 0, 0
        summary: dict[str, object] = {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run = run_policy(cfg, workload, policy)
            walls.append(time.perf_counter() - t0)
            events = run.outcome.events
            steps = run.outcome.engine_steps
            summary = run.summary
        median = statistics.median(walls)
        row = {
            "policy": policy,
            "requests": len(workload.requests),
            "sim_span_s": run.outcome.sim_end_s,
            "wall_s_median": round(median, 3),
            "wall_s_all": [round(w, 3) for w in walls],
            "events": events,
            "events_per_s": round(events / median),
            "engine_steps": steps,
            "engine_steps_per_s": round(steps / median),
            "completed": summary["completed"],
            "preemptions": summary["preemptions"],
        }
        rows.append(row)
        print(
            f"{policy:>12}: {median:6.2f} s wall (median of {args.repeats}: "
            f"{', '.join(f'{w:.2f}' for w in walls)}), {events} events, "
            f"{events / median:,.0f} events/s, {steps} engine steps "
            f"({steps / median:,.0f} steps/s), {summary['completed']} completed"
        )
    meta = {
        "trace": "mooncake (full, 12,031 requests, 3,537 s)"
        if args.num_requests is None
        else f"mooncake (first {len(workload.requests)} requests)",
        "profile": args.profile,
        "instances": args.instances,
        "target_wall_s": 60,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "one process, one core; wall includes summarising metrics",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim_speed.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2, sort_keys=True) + "\n"
    )
    lines = [
        "# Simulator speed",
        "",
        f"Command: `python benchmarks/sim_speed.py --repeats {args.repeats}"
        + (f" --num-requests {args.num_requests}" if args.num_requests else "")
        + "`; "
        f"{meta['trace']}, {args.instances} x {args.profile}, Python {meta['python']}.",
        "Target: under 60 s wall per run on one core. An event is a scheduler decision (arrival, "
        "plan end, migration); one plan covers many identical decode steps in closed form, so "
        "engine steps (forward passes of the emulated GPUs) far outnumber events.",
        "",
        "| policy | wall s (median) | all runs | events | events/s | engine steps | steps/s "
        "| completed | preemptions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['wall_s_median']} | {r['wall_s_all']} | {r['events']} | "
            f"{r['events_per_s']:,} | {r['engine_steps']:,} | {r['engine_steps_per_s']:,} | "
            f"{r['completed']} | {r['preemptions']} |"
        )
    (args.out / "sim_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
