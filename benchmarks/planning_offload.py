"""What a re-plan costs the gateway's event loop: solved on the loop, or in the planning thread.

The L4 runtime's refinement rounds and re-plans are one pure job (``l4.agents.planning``). The
simulator solves it inline; the gateway hands it to its planning thread (``PlanningThread``)
because the event loop that runs the policy also relays every client's stream. This benchmark
times one re-plan round (the coordinator's DP on the Mooncake trace's summary, scaled to E / 4 of
the trace's rate, from one stage of E instances) while a probe on the same loop sleeps 1 ms at a
time and records how late each wake-up is: the delay every stream's next token would see.

Both ways run in one process, one after the other, so their ratio is what to compare on a shared
machine. Prints a table and writes docs/benchmarks/planning_offload.{json,md}. Usage:

    python benchmarks/planning_offload.py [--instances 4,16,64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram

from l4.agents.planning import PlanningRound, ReplanInput, solve_round
from l4.agents.refinement import BoundaryRule, RefinementConfig
from l4.agents.stages import StageTable
from l4.core import StageModel, exponential_grid, summarize_workload
from l4.costmodel import load_profile
from l4.gateway.service import PlanningThread
from l4.instance import InstanceConfig
from l4.offload import Inline, Offload
from l4.workload import WorkloadSpec, build_workload

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "h100-llama-3.2-3b"


def replan_job(instances: int) -> PlanningRound:
    profile = load_profile(PROFILE)
    spec = WorkloadSpec(
        trace="mooncake",
        max_context_tokens=profile.model.max_context_tokens,
        rate_scale=instances / 4,
    )
    summary = summarize_workload(
        exponential_grid(profile.model.max_context_tokens), build_workload(spec)
    )
    return PlanningRound(
        model=StageModel(profile, instance=InstanceConfig.from_profile(profile)),
        rule=BoundaryRule.QOE,
        refinement=RefinementConfig(),
        boundaries=(),
        replan=ReplanInput(
            coordinator=0,
            table=StageTable.single(instances),
            summary=summary,
            running_tokens=((),) * instances,
        ),
        replan_min_gain=0.1,
        replan_period_s=30.0,
        stage_margin=0.2,
    )


async def _measure(offload: Offload, job: PlanningRound, rounds: int) -> dict[str, float]:
    lateness: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t0 - 0.001)

    solve_s: list[float] = []
    async with asyncio.TaskGroup() as tg:
        tg.create_task(probe())
        for _ in range(rounds):
            await asyncio.sleep(0.05)  # the probe's baseline between rounds
            t0 = time.perf_counter()
            done = offload.submit(functools.partial(solve_round, job))
            while not done.done():  # as the runtime does: looks again at its next tick
                await asyncio.sleep(0.005)
            done.result()
            solve_s.append(time.perf_counter() - t0)
        stop.set()
    lateness.sort()
    return {
        "solve_median_ms": statistics.median(solve_s) * 1e3,
        "lateness_p50_ms": lateness[len(lateness) // 2] * 1e3,
        "lateness_p99_ms": lateness[int(len(lateness) * 0.99)] * 1e3,
        "lateness_max_ms": lateness[-1] * 1e3,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", default="4,16,64", help="fleet sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="re-plans timed per fleet size and way")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for n in (int(x) for x in args.instances.split(",")):
        job = replan_job(n)
        solve_round(job)  # warm-up: imports, first allocations
        thread = PlanningThread(Histogram("rounds_seconds", "", registry=CollectorRegistry()))
        try:
            for way, offload in (("on the loop", Inline()), ("planning thread", thread)):
                seen = asyncio.run(_measure(offload, job, args.rounds))
                row = {"instances": n, "way": way, **seen}
                rows.append(row)
                print(json.dumps(row))
        finally:
            thread.close()
    load = (load_before, os.getloadavg()[0])
    md = render(rows, args.rounds, load)
    print(md)
    if not args.no_write:
        result = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "rounds": args.rounds,
            "load_average_1min": load,
            "rows": rows,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "planning_offload.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "planning_offload.md").write_text(md)
    return 0


def render(rows: list[dict[str, object]], rounds: int, load: tuple[float, float]) -> str:
    lines = [
        "# A re-plan and the gateway's event loop",
        "",
        "Generated by `python benchmarks/planning_offload.py`: one re-plan round (the DP on the "
        "Mooncake trace's summary at E / 4 of its rate, from one stage of E instances), solved on "
        "the event loop or in the gateway's planning thread, while a probe on the loop sleeps "
        f"1 ms at a time; medians of {rounds} rounds for the solve, the probe's lateness over "
        "the whole run (what every stream's next token waits). The machine's 1-minute load "
        f"average was {load[0]:.2f} at the start and {load[1]:.2f} at the end (with "
        f"{os.cpu_count()} CPUs): the two ways ran one after the other, compare them, not runs.",
        "",
        "| instances | solved | re-plan | loop lateness p50 | p99 | max |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['instances']} | {r['way']} | {r['solve_median_ms']:.0f} ms "
            f"| {r['lateness_p50_ms']:.2f} ms | {r['lateness_p99_ms']:.2f} ms "
            f"| {r['lateness_max_ms']:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
