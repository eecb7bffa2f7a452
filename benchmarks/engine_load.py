"""Engine timing under load: step-time overshoot with hundreds of concurrent streams.

One emulated instance serves in its own process (pinned to CPU 0 where the machine has two or
more CPUs: the engine's single core); the client, in this process (CPU 1), opens S streams at
once, each a prompt of P token ids and exactly O output tokens. The engine records every step's
predicted and measured wall duration (`EngineCore.step_log`), sent back when it stops:

* lateness: how long after its deadline the step loop woke (wall ms);
* overshoot: measured step duration (from the previous wake, or from the plan after idling) minus
  the predicted one, in wall ms and relative to the prediction;
* stretch: sum of measured over sum of predicted step durations, minus one (how much slower the
  whole emulated timeline ran than the cost model says); resyncs: steps the loop restarted from
  "now" because it fell more than 50 ms (wall) behind.

The client's mean TPOT is compared with the simulator's for the same requests. Each
configuration runs `--repeats` times; the table shows medians over repeats. Writes
docs/benchmarks/engine_load.{json,md}. Usage:

    python benchmarks/engine_load.py [--streams 100,200,400] [--time-scales 1,10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from _engine_proc import serve_until_told
from _machine import machine_meta, write_results
from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.engine.replay import ReplayConfig, replay
from l4.engine.server import EngineConfig
from l4.engine.serving import EngineServer
from l4.instance import InstanceConfig
from l4.metrics import SloConfig, latency_samples
from l4.request import RequestSpec
from l4.sim.runner import SimConfig, run_policy
from l4.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
StepRows = list[tuple[float, float, float, int]]


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


def serve_child(config: EngineConfig, conn: Connection) -> None:
    """The engine process: serve until told to stop, then send back the step log."""
    pin(0)

    async def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
            sock.bind(("127.0.0.1", 0))
            server = EngineServer(config, sock=sock)
            await serve_until_told(server, sock, conn)
            core = server.engine.core
            rows: StepRows = [
                (s.predicted_s, s.measured_s, s.late_s, s.num_seqs) for s in core.step_log
            ]
            conn.send((rows, core.num_resyncs))

    asyncio.run(run())


def step_stats(rows: StepRows, resyncs: int) -> dict[str, float]:
    pred = np.array([r[0] for r in rows])
    meas = np.array([r[1] for r in rows])
    late = np.array([r[2] for r in rows])
    over = meas - pred
    ratio = over / pred
    lp50, lp99 = np.percentile(late, [50, 99]) * 1e3
    op50, op99 = np.percentile(over, [50, 99]) * 1e3
    rp50, rp99 = np.percentile(ratio, [50, 99])
    return {
        "steps": float(len(rows)),
        "predicted_step_ms_median": float(np.median(pred) * 1e3),
        "lateness_ms_p50": float(lp50),
        "lateness_ms_p99": float(lp99),
        "overshoot_ms_p50": float(op50),
        "overshoot_ms_p99": float(op99),
        "overshoot_rel_p50": float(rp50),
        "overshoot_rel_p99": float(rp99),
        "stretch": float(meas.sum() / pred.sum() - 1.0),
        "resyncs": float(resyncs),
    }


def run_once(
    config: EngineConfig, requests: tuple[RequestSpec, ...], sim_tpot_s: float
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_child, args=(config, child))
    proc.start()
    try:
        port = parent.recv()
        t0 = time.perf_counter()
        records = asyncio.run(
            replay(
                requests,
                ReplayConfig(
                    base_url=f"http://127.0.0.1:{port}",
                    time_scale=config.time_scale,
                    warm_connections=len(requests),
                ),
            )
        )
        wall = time.perf_counter() - t0
        parent.send("stop")
        rows, resyncs = parent.recv()
    finally:
        proc.join(timeout=30)
    _, tpot, _ = latency_samples(records)
    stats = step_stats(rows, resyncs)
    stats["wall_s"] = wall
    # Tokens the engine streamed per wall second: what one core sustained.
    stats["tokens_per_wall_s"] = sum(r.generated_tokens for r in records) / wall
    stats["unfinished"] = float(sum(r.finish_s is None for r in records))
    stats["client_tpot_ms"] = float(np.mean(tpot) * 1e3)
    stats["client_tpot_diff"] = float(np.mean(tpot) / sim_tpot_s - 1.0)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="100,200,400")
    parser.add_argument("--time-scales", default="1,10")
    parser.add_argument("--input-tokens", type=int, default=200)
    parser.add_argument("--output-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="h100-llama-3.2-3b")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    load_before = os.getloadavg()
    pin(1)
    profile = load_profile(args.profile)
    icfg = InstanceConfig.from_profile(profile)
    sim_cfg = SimConfig(profile=profile, instance_config=icfg, num_instances=1,
                        migration=MigrationConfig(), slo=SloConfig(), seed=0)  # fmt: skip
    rows = []
    for streams in (int(x) for x in args.streams.split(",")):
        requests = tuple(
            RequestSpec(request_id=i, arrival_s=0.0, input_tokens=args.input_tokens,
                        output_tokens=args.output_tokens)
            for i in range(streams)
        )  # fmt: skip
        # A burst has no meaningful rate; the summary wants one > 0 and round_robin ignores it.
        workload = Workload(name="burst", source="generated", timestamped=True,
                            requests=requests, mean_rate_rps=float(streams),
                            clipped_requests=0)  # fmt: skip
        _, sim_tpot, _ = latency_samples(
            run_policy(sim_cfg, workload, "round_robin").outcome.records
        )
        for ts in (float(x) for x in args.time_scales.split(",")):
            config = EngineConfig(profile=profile, instance_config=icfg, served_model_name="m",
                                  time_scale=ts)  # fmt: skip
            runs = [
                run_once(config, requests, float(np.mean(sim_tpot))) for _ in range(args.repeats)
            ]
            median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            row: dict[str, object] = {
                "streams": streams,
                "time_scale": ts,
                "sim_tpot_ms": float(np.mean(sim_tpot) * 1e3),
                "median": median,
                "runs": runs,
            }
            rows.append(row)
            print(
                f"{streams} streams x{ts:g}: lateness p50 {median['lateness_ms_p50']:.3f} ms, "
                f"p99 {median['lateness_ms_p99']:.3f} ms; overshoot p50 "
                f"{median['overshoot_ms_p50']:+.3f} ms ({median['overshoot_rel_p50']:+.1%}), "
                f"p99 {median['overshoot_ms_p99']:+.3f} ms ({median['overshoot_rel_p99']:+.1%}); "
                f"stretch {median['stretch']:+.1%}, resyncs {median['resyncs']:.0f}; client TPOT "
                f"{median['client_tpot_ms']:.2f} ms vs sim {np.mean(sim_tpot) * 1e3:.2f} ms "
                f"({median['client_tpot_diff']:+.1%}); {median['tokens_per_wall_s']:,.0f} "
                "tokens/s",
                flush=True,
            )
    meta = {
        "profile": args.profile,
        "input_tokens": args.input_tokens,
        "output_tokens": args.output_tokens,
        "repeats": args.repeats,
        **machine_meta("engine_load.py", load_before),
    }
    write_results(args.out, "engine_load", meta, rows)
    lines = [
        "# Engine timing under load",
        "",
        f"Command: `{meta['command'].strip()}`. One `{args.profile}` instance in its own "
        f"process (CPU 0), S streams opened at once by a client in another process (CPU 1), "
        f"each {args.input_tokens} prompt tokens and exactly {args.output_tokens} output "
        f"tokens; {meta['cpus']} CPUs, Python {meta['python']}. Medians over "
        f"{args.repeats} runs. Lateness and overshoot are wall milliseconds per engine step. "
        f"Load average before / after: {load_before[0]:.2f} / {meta['load_average_at_end'][0]:.2f}"
        " (1 min; the after value counts this benchmark's own two processes, a before value well "
        "above 0 means other jobs shared the machine).",
        "",
        "| streams | time scale | predicted step (median) | lateness p50 | lateness p99 "
        "| overshoot p50 | overshoot p99 | stretch | resyncs | client TPOT vs sim "
        "| tokens/s (wall) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["median"]
        assert isinstance(m, dict)
        lines.append(
            f"| {r['streams']} | {r['time_scale']:g} | {m['predicted_step_ms_median']:.3f} ms | "
            f"{m['lateness_ms_p50']:.3f} ms | {m['lateness_ms_p99']:.3f} ms | "
            f"{m['overshoot_ms_p50']:+.3f} ms ({m['overshoot_rel_p50']:+.1%}) | "
            f"{m['overshoot_ms_p99']:+.3f} ms ({m['overshoot_rel_p99']:+.1%}) | "
            f"{m['stretch']:+.1%} | {m['resyncs']:.0f} | {m['client_tpot_diff']:+.1%} | "
            f"{m['tokens_per_wall_s']:,.0f} |"
        )
    (args.out / "engine_load.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
