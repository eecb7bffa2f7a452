"""Which effect decides L4 versus the baselines: switch the simulator's effects off one at a time.

L4 can only win through the effects that length-specialised stages reduce: the heterogeneity
penalty of mixed batches (alpha), KV memory pressure, and long prefills stalling short requests'
decodes; it pays with migrations and with the pooling it gives up (a request can only use its
stage's instances). This benchmark runs L4, its one-stage ablation (`l4_bids`: the same bids, no
stages) and the baselines on one scenario in seven environments: as calibrated; alpha = 0 (no
heterogeneity penalty); the paper's alpha (0.0736: a 1 x 64K + 15 x 100-token batch's attention
2x slower); 8x the KV cache (no memory pressure); free migration (instant KV copy); the three
"off" at once; and the world most favourable to staging (the paper's alpha, 8x KV, free
migration). Staging's own effect is `l4` versus `l4_bids`; prefill interference and
pooling have no switch in the simulator, so they show in that comparison and in the per-length
breakdown (short, medium, long prompts). Windows of the trace are its samples (`--offset`, as in
the experiment suite). Prints the tables and writes docs/benchmarks/effects.{md,json}
(effects-TRACE.{md,json} for other traces):

    python benchmarks/effects.py [--trace mooncake] [--profile h100-llama-3.2-3b] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from _experiments_lib import PAPER_ALPHA, window_offset_s
from l4.cliargs import OneLineParser, positive_float, positive_int
from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.errors import L4Error
from l4.instance import InstanceConfig
from l4.metrics import SloConfig
from l4.sim.runner import SimConfig, run_policy, summarize_outcome
from l4.workload import WorkloadSpec, build_workload

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("least_load", "least_prefill", "pd_disagg", "length_buckets", "llumnix")
POLICIES = (*BASELINES, "l4", "l4_bids")
PAPER = f"alpha={PAPER_ALPHA:g}"
# The most favourable world for staging: the paper's heterogeneity, memory and migration free.
FAVOURABLE = f"{PAPER}, KV x8, free migration"
ENVIRONMENTS = (
    "calibrated",
    "alpha=0",
    PAPER,
    "KV x8",
    "free migration",
    "all three off",
    FAVOURABLE,
)
# Prompt-length classes of the per-length breakdown, tokens: [lo, hi).
CLASSES = (("short <2K", 0, 2048), ("medium 2K-16K", 2048, 16384), ("long >=16K", 16384, None))
METRICS = ("e2e_mean_s", "e2e_p99_s", "ttft_mean_s", "tpot_mean_s", "slo_attainment")


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    trace: str
    profile: str
    instances: int
    rate_scale: float
    duration_s: float
    window: int
    environment: str
    policy: str


def _config(job: Job) -> SimConfig:
    off = job.environment
    profile = load_profile(job.profile)
    if off in ("alpha=0", "all three off"):
        profile = profile.with_overrides(alpha=0.0)
    if off in (PAPER, FAVOURABLE):
        profile = profile.with_overrides(alpha=PAPER_ALPHA)
    instance = InstanceConfig.from_profile(profile)
    if off in ("KV x8", "all three off", FAVOURABLE):
        instance = replace(instance, num_kv_blocks=instance.num_kv_blocks * 8)
    migration = MigrationConfig()
    if off in ("free migration", "all three off", FAVOURABLE):
        migration = replace(
            migration, bandwidth_bytes_per_s=1e18, downtime_base_s=0.0, replay_overhead_s=0.0
        )
    return SimConfig(
        profile=profile,
        instance_config=instance,
        num_instances=job.instances,
        migration=migration,
        slo=SloConfig(),
        seed=job.window,
    )


def run(job: Job) -> dict[str, object]:
    """One policy run; the metrics overall and per prompt-length class."""
    cfg = _config(job)
    workload = build_workload(
        WorkloadSpec(
            trace=job.trace,
            max_context_tokens=cfg.profile.model.max_context_tokens,
            rate_scale=job.rate_scale,
            duration_s=job.duration_s,
            seed=job.window,
            offset_s=window_offset_s(job.trace, job.window),
        )
    )
    t0 = time.perf_counter()
    result = run_policy(cfg, workload, job.policy)
    out: dict[str, object] = {"wall_s": time.perf_counter() - t0}
    out["all"] = _metrics(result.summary)
    for name, lo, hi in CLASSES:
        part = [
            r
            for r in result.outcome.records
            if r.input_tokens >= lo and (hi is None or r.input_tokens < hi)
        ]
        if part:
            out[name] = _metrics(summarize_outcome(cfg, result.outcome, part))
    return out


def _metrics(summary: dict[str, object]) -> dict[str, float | None]:
    def get(block: str, key: str) -> float | None:
        value = summary.get(block)
        if isinstance(value, dict):
            v = value.get(key)
            return float(v) if isinstance(v, int | float) else None
        return None

    slo = summary.get("slo_attainment")
    return {
        "e2e_mean_s": get("e2e_s", "mean"),
        "e2e_p99_s": get("e2e_s", "p99"),
        "ttft_mean_s": get("ttft_s", "mean"),
        "tpot_mean_s": get("tpot_s", "mean"),
        "slo_attainment": float(slo) if isinstance(slo, int | float) else None,
    }


def _median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def _change(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref == 0:
        return "-"
    return f"{value / ref - 1.0:+.1%}"


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "slo_attainment":
        return f"{value:.1%}"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="effects.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 1)[1],
    )
    p.add_argument("--trace", default="mooncake", help="bundled trace (default: %(default)s)")
    p.add_argument("--profile", default="h100-llama-3.2-3b", help="default: %(default)s")
    p.add_argument("--instances", type=positive_int, default=16, help="default: %(default)s")
    p.add_argument(
        "--rate-scales",
        default="2,4",
        help="comma-separated multipliers of the trace's rate (default: %(default)s)",
    )
    p.add_argument(
        "--duration", type=positive_float, default=300.0, help="seconds per window (default: 300)"
    )
    p.add_argument(
        "--windows", type=positive_int, default=3, help="trace windows per point (default: 3)"
    )
    p.add_argument("--jobs", type=positive_int, default=2, help="worker processes (default: 2)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report path (default: docs/benchmarks/effects.md for mooncake, else "
        "effects-TRACE.md there)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None:
        name = "effects.md" if args.trace == "mooncake" else f"effects-{args.trace}.md"
        args.out = ROOT / "docs" / "benchmarks" / name
    try:
        rates = [positive_float(x) for x in args.rate_scales.split(",") if x.strip()]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        print(f"effects.py: error: --rate-scales: {exc}", file=sys.stderr)
        return 2

    def job(rate: float, env: str, policy: str, window: int) -> Job:
        return Job(
            trace=args.trace,
            profile=args.profile,
            instances=args.instances,
            rate_scale=rate,
            duration_s=args.duration,
            window=window,
            environment=env,
            policy=policy,
        )

    jobs = [
        job(rate, env, policy, w)
        for rate in rates
        for env in ENVIRONMENTS
        for policy in POLICIES
        for w in range(args.windows)
    ]
    t0 = time.perf_counter()
    results: dict[Job, dict[str, object]] = {}
    try:
        with ProcessPoolExecutor(args.jobs) as pool:
            for i, (done, res) in enumerate(zip(jobs, pool.map(run, jobs), strict=True), 1):
                results[done] = res
                print(
                    f"[{i}/{len(jobs)}, {time.perf_counter() - t0:.0f} s] x{done.rate_scale:g} "
                    f"{done.environment} {done.policy} window {done.window}: "
                    f"{float(res['wall_s']):.1f} s",  # type: ignore[arg-type]
                    file=sys.stderr,
                )
    except L4Error as exc:
        print(f"effects.py: error: {exc}", file=sys.stderr)
        return 1

    def point(rate: float, env: str, policy: str, part: str, metric: str) -> float | None:
        values = []
        for w in range(args.windows):
            block = results[job(rate, env, policy, w)].get(part)
            values.append(block.get(metric) if isinstance(block, dict) else None)
        return _median(values)

    lines = [
        "# Which effect decides L4 versus the baselines",
        "",
        f"`python benchmarks/effects.py --trace {args.trace} --profile {args.profile} "
        f"--instances {args.instances} --rate-scales {args.rate_scales} --duration "
        f"{args.duration:g} --windows {args.windows}` ({platform.node()}, "
        f"{time.perf_counter() - t0:.0f} s). Medians over {args.windows} window(s) of "
        f"{args.duration:g} s of the trace; best baseline = lowest median among "
        f"{', '.join(BASELINES)} per metric. Negative = l4 lower (better for latencies); "
        "SLO attainment is a difference in points.",
        "",
    ]
    doc: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}, "points": []}
    points: list[dict[str, object]] = []
    for rate in rates:
        rows = []
        for env in ENVIRONMENTS:
            row = [env]
            for metric in METRICS:
                l4 = point(rate, env, "l4", "all", metric)
                base = [point(rate, env, b, "all", metric) for b in BASELINES]
                known = [b for b in base if b is not None]
                if metric == "slo_attainment":
                    best = max(known) if known else None
                    text = "-" if l4 is None or best is None else f"{(l4 - best) * 100:+.1f} pt"
                else:
                    best = min(known) if known else None
                    text = _change(l4, best)
                row.append(f"{_fmt(metric, l4)} ({text})")
            bids_e2e = point(rate, env, "l4_bids", "all", "e2e_mean_s")
            row.append(_change(point(rate, env, "l4", "all", "e2e_mean_s"), bids_e2e))
            rows.append(row)
            for policy in POLICIES:
                for part in ("all", *(c[0] for c in CLASSES)):
                    points.append(
                        {
                            "rate_scale": rate,
                            "environment": env,
                            "policy": policy,
                            "part": part,
                            **{m: point(rate, env, policy, part, m) for m in METRICS},
                        }
                    )
        header = [
            "environment",
            "l4 mean E2E (vs best)",
            "p99 E2E",
            "mean TTFT",
            "mean TPOT",
            "SLO attainment",
            "l4 vs l4_bids (mean E2E)",
        ]
        lines += [f"## x{rate:g}: l4 against the best baseline", "", *_table(header, rows), ""]
        rows = []
        for name, _, _ in CLASSES:
            row = [name]
            for metric in ("e2e_mean_s", "ttft_mean_s", "tpot_mean_s", "slo_attainment"):
                l4 = point(rate, "calibrated", "l4", name, metric)
                one = point(rate, "calibrated", "l4_bids", name, metric)
                if metric == "slo_attainment":
                    diff = "-" if l4 is None or one is None else f"{(l4 - one) * 100:+.1f} pt"
                else:
                    diff = _change(l4, one)
                row.append(f"{_fmt(metric, one)} -> {_fmt(metric, l4)} ({diff})")
            rows.append(row)
        header = ["prompt length", "mean E2E", "mean TTFT", "mean TPOT", "SLO attainment"]
        lines += [
            f"### x{rate:g}, calibrated: what staging does per prompt length (l4_bids -> l4)",
            "",
            *_table(header, rows),
            "",
        ]
    doc["points"] = points
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


if __name__ == "__main__":
    sys.exit(main())
