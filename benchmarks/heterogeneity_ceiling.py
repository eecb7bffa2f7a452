"""How much any length-aware placement can gain from the kernel's heterogeneity penalty.

L4's reason to exist is that a decode batch mixing short and long contexts runs slower than the
same tokens in length-sorted batches (the step model's alpha term). This benchmark bounds that
gain without any scheduler: for each workload it draws the decodes a fleet of K instances holds
at one moment, n per instance, from the trace (a request is in decode in proportion to its
output length, and its context is its prompt plus a uniform part of its output), and compares

* mixed: the decodes dealt to the instances at random (what a length-blind router gets), with
* sorted: the same decodes sorted by context and cut into K consecutive groups (perfect stages:
  no pooling loss, no migration cost, no queueing),

by the GPU time it takes every one of those decodes to advance one token (the sum over instances
of their step times), under the step model. The ratio mixed / sorted is the most decode work a
placement can save from heterogeneity at that batch size, so the most decode capacity it can add.
(Fleet tokens per second would not do: with equal batches the sorted fleet's short-context
instances step faster only because they hold less work, Jensen's inequality rather than the
kernel; with alpha = 0 the step is linear in the contexts and the ratio is exactly 1.)
Prefill interference is not in it (a baseline that keeps long prefills away from short decodes,
`least_prefill` or `pd_disagg`, removes most of that too), nor KV memory (sum of contexts is not
capped here; the share of instances over their KV capacity is reported).

Medians over `--draws` random moments per cell. Prints the table, writes
docs/benchmarks/heterogeneity_ceiling.{md,json}:

    python benchmarks/heterogeneity_ceiling.py [--traces azure-longdoc,servegen-r1,...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _experiments_lib import PAPER_ALPHA, window_offset_s
from l4.cliargs import OneLineParser, positive_int
from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.costmodel.profile import Profile
from l4.costmodel.step import PrefillChunk, StepCostModel
from l4.errors import L4Error
from l4.instance import InstanceConfig
from l4.metrics import SloConfig
from l4.sim.runner import SimConfig, run_policy
from l4.workload import WorkloadSpec, build_workload

ROOT = Path(__file__).resolve().parents[1]
TRACES = "azure-longdoc,servegen-r1,mooncake,azure-conv,sharegpt,servegen-mmid"
ALPHAS = "calibrated,0,paper"
# Decode-only steps, and steps that also carry a prefill chunk filling the token budget (chunked
# prefill: the kernel's penalty differs, the profile's `with_prefill` alpha).
STEPS = ("decode-only steps", "steps with a prefill chunk")
RESULTS = ROOT / "docs" / "results" / "results.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Occupancy:
    """Decodes in flight per instance under the best baseline at its capacity (the suite's)."""

    scenario: str
    policy: str
    rate_scale: float
    mean_decodes_per_instance: float


def occupancy(trace: str, profile: Profile, results: dict[str, Any]) -> Occupancy | None:
    """Run the suite's best baseline for ``trace`` at its median capacity (seed 0, calibrated,
    the scenario's window) and measure the time-averaged decodes per instance, by Little's law
    over the window: the sum of every request's decode time inside it / (window x instances)."""
    for sc, verdict in zip(results["scenarios"], results["verdicts"], strict=True):
        if sc["trace"] != trace or sc["profile"] != profile.name:
            continue
        best = verdict["best_baseline"]
        cap = [
            c
            for c in sc["capacity"]
            if c["policy"] == best
            and c["alpha"] == "calibrated"
            and c["mechanism"] == "kv-transfer"
        ]
        if not cap or not cap[0]["rate_scale"]:
            return None
        rate = float(cap[0]["rate_scale"]["median"])
        duration = float(sc["duration_s"])
        cfg = SimConfig(
            profile=profile,
            instance_config=InstanceConfig.from_profile(profile),
            num_instances=int(sc["instances"]),
            migration=MigrationConfig(),
            slo=SloConfig(),
            seed=0,
        )
        workload = build_workload(
            WorkloadSpec(
                trace=trace,
                max_context_tokens=profile.model.max_context_tokens,
                rate_scale=rate,
                duration_s=duration,
                seed=0,
                offset_s=window_offset_s(trace, 0),
            )
        )
        records = run_policy(cfg, workload, best).outcome.records
        busy = sum(
            max(0.0, min(r.finish_s, duration) - min(r.first_token_s, duration))
            for r in records
            if r.first_token_s is not None and r.finish_s is not None
        )
        return Occupancy(
            scenario=str(sc["name"]),
            policy=best,
            rate_scale=rate,
            mean_decodes_per_instance=busy / (duration * cfg.num_instances),
        )
    return None


def decode_contexts(
    trace: str, profile: Profile, requests: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, output) tokens of the trace's requests, at most ``requests`` of them."""
    workload = build_workload(
        WorkloadSpec(
            trace=trace,
            max_context_tokens=profile.model.max_context_tokens,
            num_requests=requests,
            seed=seed,
        )
    )
    prompts = np.array([r.input_tokens for r in workload.requests], dtype=np.float64)
    outputs = np.array([r.output_tokens for r in workload.requests], dtype=np.float64)
    return prompts, outputs


def draw(
    prompts: np.ndarray, outputs: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Contexts of ``count`` decodes in flight at a random moment (with replacement)."""
    weights = outputs / outputs.sum()
    pick = rng.choice(len(prompts), size=count, p=weights)
    contexts: np.ndarray = np.floor(prompts[pick] + rng.uniform(size=count) * outputs[pick])
    return contexts


def fleet_step_s(model: StepCostModel, groups: Sequence[np.ndarray], chunk_tokens: int) -> float:
    """GPU-seconds for every decode of the fleet to advance one token (each instance's step
    also carrying a fresh prefill chunk of ``chunk_tokens`` when that is positive)."""
    return sum(
        model.step_time_s(
            num_decodes=len(g),
            context_sum_tokens=int(g.sum()),
            context_max_tokens=int(g.max()),
            chunks=(PrefillChunk(tokens=chunk_tokens, prior_tokens=0),) if chunk_tokens > 0 else (),
        )
        for g in groups
    )


def cell(
    model: StepCostModel,
    prompts: np.ndarray,
    outputs: np.ndarray,
    *,
    instances: int,
    per_instance: int,
    draws: int,
    kv_tokens: int,
    chunk_tokens: int,
    seed: int,
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    gains, over = [], []
    for _ in range(draws):
        ctx = draw(prompts, outputs, instances * per_instance, rng)
        mixed = np.split(rng.permutation(ctx), instances)
        ordered = np.split(np.sort(ctx), instances)
        gains.append(
            fleet_step_s(model, mixed, chunk_tokens) / fleet_step_s(model, ordered, chunk_tokens)
        )
        over.append(float(np.mean([g.sum() > kv_tokens for g in mixed])))
    return {
        "gain_median": statistics.median(gains),
        "gain_p10": float(np.percentile(gains, 10)),
        "gain_p90": float(np.percentile(gains, 90)),
        "mixed_over_kv_share": statistics.fmean(over),
    }


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="heterogeneity_ceiling.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 1)[1],
    )
    p.add_argument("--traces", default=TRACES, help="comma-separated (default: %(default)s)")
    p.add_argument("--profile", default="h100-llama-3.2-3b", help="default: %(default)s")
    p.add_argument(
        "--alphas",
        default=ALPHAS,
        help=f"comma-separated: calibrated, paper ({PAPER_ALPHA:g}) or a constant "
        "(default: %(default)s)",
    )
    p.add_argument("--instances", type=positive_int, default=16, help="default: %(default)s")
    p.add_argument(
        "--batch-sizes", default="4,8,16,32,64", help="decodes per instance (default: %(default)s)"
    )
    p.add_argument("--draws", type=positive_int, default=200, help="default: %(default)s")
    p.add_argument(
        "--requests",
        type=positive_int,
        default=20000,
        help="requests read per trace (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks" / "heterogeneity_ceiling.md"
    )
    p.add_argument(
        "--no-occupancy",
        dest="occupancy",
        action="store_false",
        help="skip the simulator runs that measure the batch at the best baseline's capacity",
    )
    p.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    return p


def alpha_profile(base: Profile, name: str) -> Profile:
    if name == "calibrated":
        return base
    value = PAPER_ALPHA if name == "paper" else float(name)
    return base.with_overrides(alpha=value)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    traces = [t.strip() for t in args.traces.split(",") if t.strip()]
    alphas = [a.strip() for a in args.alphas.split(",") if a.strip()]
    try:
        sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError("need positive integers")
        for a in alphas:
            if a not in ("calibrated", "paper"):
                float(a)
    except ValueError as exc:
        print(f"heterogeneity_ceiling.py: error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    base = load_profile(args.profile)
    budget = InstanceConfig.from_profile(base).max_num_batched_tokens
    rows: list[dict[str, object]] = []
    occupied: dict[str, Occupancy] = {}
    results = json.loads(RESULTS.read_text()) if args.occupancy and RESULTS.exists() else None
    try:
        for trace in traces:
            if results is not None:
                occ = occupancy(trace, base, results)
                if occ is not None:
                    occupied[trace] = occ
                    print(
                        f"[{time.perf_counter() - t0:.0f} s] {trace}: {occ.policy} at "
                        f"x{occ.rate_scale:.3g} holds {occ.mean_decodes_per_instance:.1f} "
                        "decodes per instance",
                        file=sys.stderr,
                    )
            prompts, outputs = decode_contexts(trace, base, args.requests, args.seed)
            at_capacity = (
                [max(1, round(occupied[trace].mean_decodes_per_instance))]
                if trace in occupied
                else []
            )
            for alpha, step, n in itertools.product(alphas, STEPS, sorted({*sizes, *at_capacity})):
                model = StepCostModel(alpha_profile(base, alpha))
                res = cell(
                    model,
                    prompts,
                    outputs,
                    instances=args.instances,
                    per_instance=n,
                    draws=args.draws,
                    kv_tokens=base.kv_capacity_tokens,
                    chunk_tokens=max(0, budget - n) if step == STEPS[1] else 0,
                    seed=args.seed,
                )
                rows.append(
                    {
                        "trace": trace,
                        "alpha": alpha,
                        "step": step,
                        "per_instance": n,
                        "at_capacity": n in at_capacity,
                        **res,
                    }
                )
                print(
                    f"[{time.perf_counter() - t0:.0f} s] {trace} alpha={alpha} {step} n={n}: "
                    f"x{res['gain_median']:.3f}",
                    file=sys.stderr,
                )
    except (L4Error, ValueError) as exc:
        print(f"heterogeneity_ceiling.py: error: {exc}", file=sys.stderr)
        return 1
    text = render(args, rows, occupied, traces, alphas, sizes, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        doc = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
            "occupancy": {t: asdict(o) for t, o in occupied.items()},
        }
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0


def render(
    args: argparse.Namespace,
    rows: list[dict[str, object]],
    occupied: dict[str, Occupancy],
    traces: list[str],
    alphas: list[str],
    sizes: list[int],
    wall_s: float,
) -> str:
    by = {(r["trace"], r["alpha"], r["step"], r["per_instance"]): r for r in rows}
    lines = [
        "# The heterogeneity ceiling: what perfect length sorting of decode batches can gain",
        "",
        f"`python benchmarks/heterogeneity_ceiling.py --traces {','.join(traces)} --profile "
        f"{args.profile} --alphas {','.join(alphas)} --instances {args.instances} --batch-sizes "
        f"{args.batch_sizes} --draws {args.draws}` ({platform.node()}, {wall_s:.0f} s).",
        "",
        "GPU time for every decode of one moment to advance one token, dealt at random to "
        f"{args.instances} instances, over the same decodes sorted into {args.instances} length "
        "groups (median of the draws [p10-p90]). "
        "An upper bound on what any length-aware placement (L4's stages included) wins from the "
        f"heterogeneity penalty alone; `paper` is alpha = {PAPER_ALPHA:g} (a 1 x 64K + 15 x "
        "100-token batch's attention 2x slower than a uniform one). 'over KV' is the share of "
        "random batches whose contexts exceed one instance's KV capacity (such a moment cannot "
        "occur; memory is not modelled here).",
        "",
    ]
    if occupied:
        lines += [
            "Decodes an instance actually holds: the suite's best baseline for the scenario "
            "(docs/results.md) run at its median capacity (seed 0, calibrated alpha), the time "
            "average over the window:",
            "",
            "| trace | scenario | best baseline at its capacity | mean decodes per instance |",
            "|---|---|---|---:|",
            *(
                f"| {t} | {o.scenario} | {o.policy} at x{o.rate_scale:.3g} | "
                f"{o.mean_decodes_per_instance:.1f} |"
                for t, o in occupied.items()
            ),
            "",
        ]
    header = [
        "trace",
        "alpha",
        *(f"n = {n} per instance" for n in sizes),
        "at the best baseline's capacity",
    ]
    for step in STEPS:
        lines += [
            f"**{step.capitalize()}**"
            + (
                " (each instance's step also computes the first chunk of a prompt, filling the "
                "token budget: the same prefill work in both arrangements)"
                if step == STEPS[1]
                else ""
            ),
            "",
            "| " + " | ".join(header) + " |",
            "|---|---|" + "---:|" * (len(sizes) + 1),
        ]
        for trace, alpha in itertools.product(traces, alphas):
            mine = [r for r in rows if (r["trace"], r["alpha"], r["step"]) == (trace, alpha, step)]
            cells = [_gain(by[(trace, alpha, step, n)]) for n in sizes]
            cap = [r for r in mine if r["at_capacity"]]
            cells.append(f"n = {cap[0]['per_instance']}: {_gain(cap[0])}" if cap else "-")
            lines.append(f"| {trace} | {alpha} | " + " | ".join(cells) + " |")
        lines.append("")
    at_cap = [r for r in rows if r["at_capacity"]]
    if at_cap:
        lines.append("At the best baseline's capacity, the largest ceiling over these traces:")
        lines.append("")
        for alpha in alphas:
            mine = [r for r in at_cap if r["alpha"] == alpha]
            top = max(mine, key=lambda r: float(r["gain_median"]))  # type: ignore[arg-type]
            lines.append(
                f"* alpha {alpha}: x{top['gain_median']:.3f} ({top['trace']}, "
                f"{str(top['step']).lower()}, n = {top['per_instance']})"
            )
        lines.append("")
    return "\n".join(lines)


def _gain(r: dict[str, object]) -> str:
    text = f"x{r['gain_median']:.3f} [{r['gain_p10']:.3f}-{r['gain_p90']:.3f}]"
    share = float(r["mixed_over_kv_share"])  # type: ignore[arg-type]
    if share > 0:
        text += f", over KV {share:.0%}" if share >= 0.005 else ", over KV <1%"
    return text


if __name__ == "__main__":
    sys.exit(main())
