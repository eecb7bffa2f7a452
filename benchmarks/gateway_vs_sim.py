"""The gateway runs the L4 the simulator evaluates: one trace, both ways, the same policy.

Live: K emulated instances (`l4 engine`, one child process, a time scale the CPU keeps up with),
`l4 serve` in front of them (another child process: the policy's clock runs in emulated seconds
too) and the replay client in this process, sending each request of the trace at its arrival time
as a streaming completion of exactly its lengths. Simulated: `l4 simulate` with the same trace,
profile, instances, policy and migration mechanism (`replay`: what the gateway does). Both plan
from the same expected workload (the trace, given to the gateway as `--workload`).

Compared: mean TTFT, TPOT and E2E (live: as the client measures them, in emulated seconds) and
migrations by reason (live: the gateway's `l4_migrations_total`). Target: means within 10%,
migrations within 20%. Each policy runs `--repeats` times live; medians over repeats.

The simulator is deterministic, but a queueing fleet is not a smooth function of its input: under
overload a shift of milliseconds in one arrival decides which instance a long prompt lands on and
who waits behind it. Live, every request reaches the gateway a little late (the client's loop,
sockets, the gateway's own work), so the simulator also runs `--sim-draws` times with every
arrival delayed by a uniform draw in [0, `--sim-jitter-ms`) and its policy ticks at a drawn
phase against the trace, as the gateway's, which tick from its own start, do (draw 0 as the
trace, ticking as the simulator does), and the comparison is with the median over those draws,
its range printed beside it. The report also gives means over runs: a run's mean TPOT can jump
on one request's fate (a few-token request handed off after its first token), and the median of a
few runs then falls on one side of the jump. Writes docs/benchmarks/gateway_vs_sim.{json,md}.

    python benchmarks/gateway_vs_sim.py [--trace mooncake] [--duration 180] [--policies l4,...]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from l4.core.migration import MigrationConfig, MigrationMechanism
from l4.costmodel import load_profile
from l4.engine.fleet import EngineFleet
from l4.engine.replay import ReplayConfig, replay
from l4.gateway.config import GatewayConfig
from l4.gateway.process import GatewayProcess
from l4.instance import InstanceConfig
from l4.metrics import RequestRecord, SloConfig, latency_samples
from l4.request import RequestSpec
from l4.sim.runner import SimConfig, run_policy
from l4.workload import Workload, WorkloadSpec, build_workload

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ttft", "tpot", "e2e")


def means(records: tuple[RequestRecord, ...] | list[RequestRecord]) -> dict[str, float]:
    ttft, tpot, e2e = latency_samples(records)
    return {
        "ttft": float(np.mean(ttft)),
        "tpot": float(np.mean(tpot)),
        "e2e": float(np.mean(e2e)),
        "finished": float(len(e2e)),
    }


def gateway_metrics(url: str) -> dict[str, float]:
    """From the gateway's /metrics: moves by reason (``migrations_<reason>`` and their sum), its
    policy ticks on the event loop (``ticks``: count, mean, how many held the loop over 50 and
    250 ms) and its refinement rounds solved in the planning thread (``rounds``: the same)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    moved: dict[str, float] = {}
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("l4_migrations_total{") and 'outcome="ok"' in name:
            reason = name.split('reason="', 1)[1].split('"', 1)[0]
            moved[reason] = float(value)
        else:
            series[name] = float(value)
    out = {f"migrations_{k}": v for k, v in moved.items() if v > 0}
    out["migrations"] = sum(out.values())
    for key, metric in (("ticks", "l4_policy_tick_seconds"), ("rounds", "l4_planning_seconds")):
        count = series.get(f"{metric}_count", 0.0)
        out[key] = count
        out[f"{key}_mean_ms"] = series.get(f"{metric}_sum", 0.0) / count * 1e3 if count else 0.0
        for ms in (50, 250):  # bucket bounds of both histograms
            below = series.get(f'{metric}_bucket{{le="{ms / 1e3}"}}', count)
            out[f"{key}_over_{ms}ms"] = count - below
    return out


# What the policy itself counts (its `stats()`: /l4/state live, the run's summary simulated),
# beside the migrations: where requests were placed and how often the stages changed.
POLICY_COUNTS = ("spills", "overflows", "boundary_moves", "replans")


def policy_counts(stats: object) -> dict[str, float]:
    """``policy_<name>`` for each of POLICY_COUNTS the policy reports, and its cascade asks."""
    if not isinstance(stats, dict):
        return {}
    out = {f"policy_{k}": float(stats[k]) for k in POLICY_COUNTS if k in stats}
    events = stats.get("agent_events")
    if isinstance(events, dict) and "asks_cascade" in events:
        out["policy_asks_cascade"] = float(events["asks_cascade"])
    return out


def gateway_policy_counts(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/l4/state", timeout=10) as r:
        state = json.loads(r.read())
    return policy_counts(state.get("policy_stats"))


def engine_preemptions(url: str) -> float:
    """An engine's ``vllm:num_preemptions_total`` (all its label sets)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("vllm:num_preemptions_total")
    )


def spread_ties(workload: Workload, spacing_s: float) -> Workload:
    """Requests that share an arrival time (Mooncake's timestamps come in 3 s bursts of up to
    a dozen) spaced ``spacing_s`` apart in trace order. The simulator admits such a burst in
    trace order; live, the small bodies reach the gateway before the large ones of the same
    instant, so the order, and with it every placement by load, would differ by construction."""
    if spacing_s <= 0:
        return workload
    out: list[RequestSpec] = []
    last_s, k = None, 0
    for r in sorted(workload.requests, key=lambda r: (r.arrival_s, r.request_id)):
        k = k + 1 if r.arrival_s == last_s else 0
        last_s = r.arrival_s
        out.append(dataclasses.replace(r, arrival_s=r.arrival_s + k * spacing_s))
    return dataclasses.replace(workload, requests=tuple(out))


def jitter_arrivals(workload: Workload, jitter_s: float, seed: int) -> Workload:
    """Every arrival delayed by a uniform draw in [0, ``jitter_s``), in trace order (ties keep
    their order by request id): the timing noise a live client adds, for the simulator."""
    if jitter_s <= 0:
        return workload
    rng = np.random.default_rng(seed)
    shifts = rng.uniform(0.0, jitter_s, size=len(workload.requests))
    moved = [
        dataclasses.replace(r, arrival_s=r.arrival_s + float(d))
        for r, d in zip(workload.requests, shifts, strict=True)
    ]
    moved.sort(key=lambda r: (r.arrival_s, r.request_id))
    return dataclasses.replace(workload, requests=tuple(moved))


def summarise(runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Medians over runs of every key, and each key's [min, max]."""
    keys = sorted({k for run in runs for k in run})
    median = {k: statistics.median(run.get(k, 0.0) for run in runs) for k in keys}
    spread = {
        k: [min(run.get(k, 0.0) for run in runs), max(run.get(k, 0.0) for run in runs)]
        for k in keys
    }
    return median, spread


def write_trace(workload: Workload, path: Path) -> None:
    with path.open("w") as f:
        for r in workload.requests:
            f.write(
                json.dumps(
                    {
                        "arrival_s": r.arrival_s,
                        "input_tokens": r.input_tokens,
                        "output_tokens": r.output_tokens,
                    }
                )
                + "\n"
            )


def live_run(
    args: argparse.Namespace, workload: Workload, trace_path: Path, policy: str
) -> dict[str, float]:
    fleet = EngineFleet.emulating(
        args.instances,
        profile=load_profile(args.profile),
        time_scale=args.time_scale,
        seed=args.seed,
    )
    with fleet as urls:
        config = GatewayConfig(
            backends=tuple(urls),
            policy=policy,
            profile=args.profile,
            workload=str(trace_path),
            time_scale=args.time_scale,
            log_level="warning",
            seed=args.seed,
        )
        with GatewayProcess(config) as gw:
            records = asyncio.run(
                replay(workload.requests, ReplayConfig(base_url=gw.url, time_scale=args.time_scale))
            )
            seen = gateway_metrics(gw.url)
            seen.update(gateway_policy_counts(gw.url))
        seen["preemptions"] = sum(engine_preemptions(u) for u in urls)
    out = means(records)
    out.update(seen)
    out["errors"] = float(sum(1 for r in records if r.finish_s is None))
    return out


def tick_phase(draw: int, draws: int) -> float:
    """Where the simulator's first policy tick falls, in ticks after the first arrival: draw 0
    as the simulator runs (one tick after); the others one in each of ``draws - 1`` equal slices
    of (0, 1], at a seeded point in it, so that few draws still cover every phase. Live, the
    gateway ticks from its own start, so the phase of its ticks against the trace is a draw; in
    the simulator it is fixed, and 5 ms of arrival jitter does not move it: every draw then
    cascaded the same requests at the same ticks (a 3-token request live runs moved in four of
    six, after its first token, and no draw did; mean TPOT 13.1-13.5 ms over five such draws,
    12.4-15.8 over nine with the phase drawn, 13.0-16.2 live)."""
    if draw == 0:
        return 1.0
    u = float(np.random.default_rng(1_000 + draw).uniform(0.0, 1.0))
    return (draw - u) / (draws - 1)


def sim_run(
    args: argparse.Namespace, workload: Workload, policy: str, phase: float = 1.0
) -> dict[str, float]:
    profile = load_profile(args.profile)
    cfg = SimConfig(
        profile=profile,
        instance_config=InstanceConfig.from_profile(profile),
        num_instances=args.instances,
        migration=MigrationConfig(mechanism=MigrationMechanism.REPLAY),
        slo=SloConfig(),
        seed=args.seed,
        tick_phase=phase,
    )
    run = run_policy(cfg, workload, policy)
    out = means(run.outcome.records)
    out["preemptions"] = float(run.outcome.preemptions)
    moved = {k: float(v) for k, v in run.outcome.migrations_by_reason.items() if v > 0}
    out["migrations"] = sum(moved.values())
    out.update({f"migrations_{k}": v for k, v in moved.items()})
    out.update(policy_counts(run.summary.get("policy_stats")))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", default="mooncake")
    p.add_argument("--rate-scale", type=float, default=1.0)
    p.add_argument(
        "--duration",
        type=float,
        default=180.0,
        help="seconds of the trace (in 60 s, l4 moves a handful of requests: too few to compare)",
    )
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--profile", default="h100-llama-3.2-3b")
    p.add_argument("--policies", default="l4,least_load")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="engine speed-up (1 = real time; faster makes 4 engines on one core fall behind)",
    )
    p.add_argument(
        "--tie-spacing-ms",
        type=float,
        default=10.0,
        help="requests the trace gives one arrival time are spaced this far apart, in trace "
        "order, in both runs (0: as in the trace)",
    )
    p.add_argument("--repeats", type=int, default=5, help="live runs per policy")
    p.add_argument(
        "--sim-draws",
        type=int,
        default=9,  # one as the trace and one per eighth of a tick: cheap (seconds a draw)
        help="simulator runs per policy: draw 0 as the trace, the others with jittered arrivals "
        "and a drawn tick phase",
    )
    p.add_argument(
        "--sim-jitter-ms",
        type=float,
        default=5.0,
        help="each jittered draw delays every arrival by up to this much",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = p.parse_args()
    profile = load_profile(args.profile)
    workload = build_workload(
        WorkloadSpec(
            trace=args.trace,
            max_context_tokens=profile.model.max_context_tokens,
            rate_scale=args.rate_scale,
            duration_s=args.duration,
            seed=args.seed,
        )
    )
    workload = spread_ties(workload, args.tie_spacing_ms / 1e3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = Path(tmp) / "trace.jsonl"
        write_trace(workload, trace_path)
        for policy in args.policies.split(","):
            sims = []
            for d in range(max(1, args.sim_draws)):
                drawn = jitter_arrivals(workload, args.sim_jitter_ms / 1e3 if d else 0.0, d)
                sims.append(sim_run(args, drawn, policy, tick_phase(d, args.sim_draws)))
                print(json.dumps({"policy": policy, "sim_draw": d, "sim": sims[-1]}))
            sim, sim_spread = summarise(sims)
            runs = []
            for r in range(args.repeats):
                live = live_run(args, workload, trace_path, policy)
                print(json.dumps({"policy": policy, "repeat": r, "live": live}))
                runs.append(live)
            median, spread = summarise(runs)
            rows.append(
                {
                    "policy": policy,
                    "sim": sim,
                    "sim_spread": sim_spread,
                    "sim_runs": sims,
                    "live": median,
                    "live_spread": spread,
                    "live_runs": runs,
                }
            )
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "requests": len(workload.requests),
        "rows": rows,
    }
    md = render(result)
    print(md)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gateway_vs_sim.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "gateway_vs_sim.md").write_text(md)
    return 0


def _diff(live: float, sim: float) -> str:
    if sim == 0:
        return "n/a" if live == 0 else "+inf"
    return f"{(live - sim) / sim * 100:+.1f}%"


def _range(spread: dict[str, list[float]] | None, key: str, scale: float, fmt: str) -> str:
    if not spread or key not in spread:
        return ""
    lo, hi = spread[key]
    return f" [{lo * scale:{fmt}}-{hi * scale:{fmt}}]"


def render(result: dict[str, object]) -> str:
    args = result["args"]
    assert isinstance(args, dict)
    draws = int(args.get("sim_draws", "1"))
    lines = [
        "# The gateway versus the simulator: one trace, the same policy",
        "",
        "Generated by `python benchmarks/gateway_vs_sim.py`. Trace "
        f"`{args['trace']}` x{args['rate_scale']} ({result['requests']} requests, "
        f"{args['duration']} s), {args['instances']} x {args['profile']}, migration `replay`, "
        f"time scale {args['time_scale']}, seed {args['seed']}, requests of one arrival time "
        f"spaced {args.get('tie_spacing_ms', '0')} ms apart; live = median of "
        f"{args['repeats']} runs through `l4 serve`; sim = median of {draws} simulator runs "
        f"(one as the trace, the others with every arrival delayed by up to "
        f"{args.get('sim_jitter_ms', '0')} ms and the policy's ticks at a drawn phase); "
        "[min-max] over runs.",
        "",
        "| policy | mean TTFT sim / live | mean TPOT sim / live | mean E2E sim / live "
        "| migrations sim / live | unfinished live |",
        "|---|---|---|---|---|---:|",
    ]
    rows = result["rows"]
    assert isinstance(rows, list)
    for row in rows:
        s, v = row["sim"], row["live"]
        ss, vs = row.get("sim_spread"), row.get("live_spread")
        cells = [
            f"{s[m] * 1e3:.1f}{_range(ss, m, 1e3, fmt)} / {v[m] * 1e3:.1f}"
            f"{_range(vs, m, 1e3, fmt)} ms ({_diff(v[m], s[m])})"
            for m, fmt in zip(METRICS, (".0f", ".1f", ".0f"), strict=True)
        ]
        ms, mv = s["migrations"], v["migrations"]
        moved = (
            f"{ms:.0f}{_range(ss, 'migrations', 1, '.0f')} / {mv:.0f}"
            f"{_range(vs, 'migrations', 1, '.0f')} ({_diff(mv, ms)})"
        )
        lines.append(
            f"| {row['policy']} | {' | '.join(cells)} | {moved} | {v.get('errors', 0):.0f} |"
        )
    lines += [
        "",
        "The gateway runs each policy tick on its event loop (`l4_policy_tick_seconds`) and "
        "solves refinement rounds and re-plans in its planning thread (`l4_planning_seconds`); "
        "medians over the live runs:",
        "",
        "| policy | ticks | mean tick | ticks over 50 ms | over 250 ms "
        "| rounds | mean round | rounds over 50 ms | over 250 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        v = row["live"]
        if "ticks" in v:
            cells = [
                f"{v.get(k, 0.0):.0f} | {v.get(k + '_mean_ms', 0.0):.1f} ms "
                f"| {v.get(k + '_over_50ms', 0.0):.0f} | {v.get(k + '_over_250ms', 0.0):.0f}"
                for k in ("ticks", "rounds")
            ]
            lines.append(f"| {row['policy']} | {' | '.join(cells)} |")
    counted = [r for r in rows if any(k.startswith("policy_") for k in r["live"])]
    if counted:
        names = [*POLICY_COUNTS, "asks_cascade"]
        lines += [
            "",
            "What the policy counted (its `stats()`), sim / live medians: arrivals spilled to "
            "a later stage or overflowed to a neighbouring one, boundary moves, re-plans, "
            "cascade asks:",
            "",
            "| policy | " + " | ".join(n.replace("_", " ") for n in names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for row in counted:
            s, v = row["sim"], row["live"]
            nan = float("nan")
            cells = [
                f"{s.get('policy_' + n, nan):.0f} / {v.get('policy_' + n, nan):.0f}" for n in names
            ]
            lines.append(f"| {row['policy']} | {' | '.join(cells)} |")
    lines += [
        "",
        "Means over runs instead of medians. A run's mean TPOT can jump on one request's fate "
        "(a request of a few output tokens handed off after its first one streams its last "
        "tokens a re-prefill later); the median of a few runs then falls on one side of the "
        "jump, the mean over runs weighs both by how often each came:",
        "",
        "| policy | mean TTFT sim / live | mean TPOT sim / live | mean E2E sim / live "
        "| migrations sim / live |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if not (row.get("sim_runs") and row.get("live_runs")):
            continue
        s, v = run_means(row["sim_runs"]), run_means(row["live_runs"])
        cells = [
            f"{s[m] * 1e3:{fmt}} / {v[m] * 1e3:{fmt}} ms ({_diff(v[m], s[m])})"
            for m, fmt in zip(METRICS, (".0f", ".1f", ".0f"), strict=True)
        ]
        mig = "migrations"
        cells.append(f"{s[mig]:.1f} / {v[mig]:.1f} ({_diff(v[mig], s[mig])})")
        lines.append(f"| {row['policy']} | {' | '.join(cells)} |")
    lines += [
        "",
        "Each run's mean TTFT and TPOT and the preemptions its instances made (recompute: the "
        "prompt and what it generated are prefilled again), simulated draws then live runs:",
        "",
        "| policy | sim: TTFT / TPOT (preemptions) | live: TTFT / TPOT (preemptions) |",
        "|---|---|---|",
    ]
    for row in rows:
        cells = [
            ", ".join(
                f"{r['ttft']:.2f} s / {r['tpot'] * 1e3:.1f} ms "
                f"({r.get('preemptions', float('nan')):.0f})"
                for r in row[key]
            )
            for key in ("sim_runs", "live_runs")
        ]
        lines.append(f"| {row['policy']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def run_means(runs: list[dict[str, float]]) -> dict[str, float]:
    """The mean over runs of the compared figures (a run without migrations counts 0)."""
    keys = (*METRICS, "migrations")
    return {k: statistics.fmean(r.get(k, 0.0) for r in runs) for k in keys}


if __name__ == "__main__":
    raise SystemExit(main())
