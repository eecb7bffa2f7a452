"""Planner speed: the DP planner on the Mooncake trace, h100-llama-3.2-3b (128K context).

Targets (issue 3): 16 instances with the default grid under 10 ms; 256 instances under 1 s. The
timed part is what a re-plan costs: stage-cost table from a ready summary, DP, greedy merge
(summarising the trace is timed apart). Prints the figures and writes
docs/benchmarks/planner_speed.{json,md}. Usage:

    python benchmarks/planner_speed.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from l4.core import StageModel, exponential_grid, plan_stages, summarize_workload
from l4.costmodel import load_profile
from l4.workload import WorkloadSpec, build_workload

ROOT = Path(__file__).resolve().parents[1]
TARGETS_S = {16: 0.010, 256: 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in TARGETS_S),
        help="comma-separated cluster sizes, from: %(default)s",
    )
    parser.add_argument("--profile", default="h100-llama-3.2-3b")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    workload = build_workload(
        WorkloadSpec(trace="mooncake", max_context_tokens=profile.model.max_context_tokens)
    )
    grid = exponential_grid(profile.model.max_context_tokens)
    t0 = time.perf_counter()
    summary = summarize_workload(grid, workload)
    summary_s = time.perf_counter() - t0
    model = StageModel(profile)
    rows = []
    sizes = [int(x) for x in args.sizes.split(",")]
    if not set(sizes) <= set(TARGETS_S):
        parser.error(f"--sizes: each of {', '.join(map(str, TARGETS_S))}")
    for instances in sizes:
        target = TARGETS_S[instances]
        plan_stages(summary, model, instances)  # warm-up: imports, caches
        times = [
            plan_stages(summary, model, instances).planning_time_s for _ in range(args.repeats)
        ]
        plan = plan_stages(summary, model, instances)
        median = statistics.median(times)
        rows.append(
            {
                "instances": instances,
                "grid_buckets": grid.num_buckets,
                "median_s": median,
                "p90_s": float(np.percentile(times, 90)),
                "target_s": target,
                "meets_target": median < target,
                "stages": len(plan.stages),
                "cost": plan.cost,
            }
        )
        print(
            f"{instances:>4} instances, {grid.num_buckets} buckets: {median * 1e3:8.2f} ms median "
            f"of {args.repeats} (target {target * 1e3:.0f} ms: "
            f"{'met' if median < target else 'MISSED'}), {len(plan.stages)} stages"
        )
    print(f"summarising the trace ({len(workload.requests)} requests): {summary_s * 1e3:.1f} ms")
    meta = {
        "trace": "mooncake",
        "profile": args.profile,
        "max_context_tokens": profile.model.max_context_tokens,
        "substeps_per_octave": 4,
        "repeats": args.repeats,
        "summary_s": summary_s,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "planner_speed.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Planner speed",
        "",
        "DP planner (stage-cost table + DP + greedy merge) on the Mooncake trace with "
        f"`{args.profile}` (128K context, 4 sub-steps per octave from 64 tokens: "
        f"{grid.num_buckets} buckets). Median of {args.repeats} runs, one CPU core, "
        f"Python {meta['python']}, numpy {meta['numpy']}. Written by "
        "`benchmarks/planner_speed.py`.",
        "",
        "| instances | median | p90 | target | stages |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['instances']} | {row['median_s'] * 1e3:.2f} ms | {row['p90_s'] * 1e3:.2f} ms "
            f"| < {row['target_s'] * 1e3:.0f} ms | {row['stages']} |"
        )
    lines += [
        "",
        f"Summarising the trace ({len(workload.requests)} requests) once: "
        f"{summary_s * 1e3:.1f} ms (not part of a re-plan).",
        "",
    ]
    (args.out / "planner_speed.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
