"""Engine fidelity: a bundled trace replayed through `l4 engine` and through `l4.sim`.

For each time scale, starts `l4 engine` (its CLI, in its own process, pinned to CPU 0 where the
machine has two or more), replays the first N requests of the trace at their arrival times
divided by the time scale (prompts of the trace's lengths as token ids, `max_tokens` +
`ignore_eos`, streaming; the client in this process, pinned to CPU 1), and compares the TTFT,
TPOT and E2E means with those of the simulator (same profile, one instance, round_robin):

* "engine": the engine's own vLLM metrics (sum / count of `vllm:time_to_first_token_seconds`,
  `vllm:request_time_per_output_token_seconds`, `vllm:e2e_request_latency_seconds`), measured
  from a request's arrival at the engine to the step loop handing its tokens over;
* "client": what the client saw, as `vllm bench serve` measures it (from sending the request).
  Its TTFT also includes the HTTP path, multiplied by the time scale.

Prints both and writes docs/benchmarks/engine_fidelity.{json,md}. Usage:

    python benchmarks/engine_fidelity.py [--time-scales 1,5,10,20] [--num-requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.engine.replay import ReplayConfig, replay
from l4.instance import InstanceConfig
from l4.metrics import RequestRecord, SloConfig, latency_samples
from l4.sim.runner import SimConfig, run_policy
from l4.workload import Workload, WorkloadSpec, build_workload

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ttft", "tpot", "e2e")
SERVED = {
    "ttft": "vllm:time_to_first_token_seconds",
    "tpot": "vllm:request_time_per_output_token_seconds",
    "e2e": "vllm:e2e_request_latency_seconds",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


def means(records: tuple[RequestRecord, ...]) -> dict[str, float]:
    return {
        name: float(np.mean(x)) for name, x in zip(METRICS, latency_samples(records), strict=True)
    }


def served_means(text: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                sums[sample.name[:-4]] = sample.value
            elif sample.name.endswith("_count"):
                counts[sample.name[:-6]] = sample.value
    return {name: sums[m] / counts[m] for name, m in SERVED.items()}


async def wait_healthy(url: str, timeout_s: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as c, asyncio.timeout(timeout_s):
        while True:
            try:
                if (await c.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)


async def replay_once(
    workload: Workload, args: argparse.Namespace, time_scale: float
) -> tuple[tuple[RequestRecord, ...], dict[str, float], float]:
    port = free_port()
    cmd = [sys.executable, "-m", "l4", "engine", "--port", str(port), "--profile", args.profile,
           "--time-scale", f"{time_scale:g}", "--served-model-name", "m"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, preexec_fn=lambda: pin(0))
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, 60.0)
        t0 = time.perf_counter()
        records = await replay(workload.requests, ReplayConfig(base_url=url, time_scale=time_scale))
        wall = time.perf_counter() - t0
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as c:
            served = served_means((await c.get("/metrics")).text)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return records, served, wall


def rel(a: float, b: float) -> float:
    return a / b - 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="azure-conv")
    parser.add_argument("--num-requests", type=int, default=300)
    parser.add_argument("--rate-scale", type=float, default=1.0)
    parser.add_argument("--profile", default="h100-llama-3.1-8b")
    parser.add_argument("--time-scales", default="1,5,10,20")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    load_before = os.getloadavg()
    pin(1)
    profile = load_profile(args.profile)
    icfg = InstanceConfig.from_profile(profile)
    workload = build_workload(
        WorkloadSpec(trace=args.trace, max_context_tokens=profile.model.max_context_tokens,
                     num_requests=args.num_requests, rate_scale=args.rate_scale)
    )  # fmt: skip
    sim_cfg = SimConfig(profile=profile, instance_config=icfg, num_instances=1,
                        migration=MigrationConfig(), slo=SloConfig(), seed=0)  # fmt: skip
    sim = means(run_policy(sim_cfg, workload, "round_robin").outcome.records)
    rows = []
    for ts in (float(x) for x in args.time_scales.split(",")):
        records, served, wall = asyncio.run(replay_once(workload, args, ts))
        client = means(records)
        row: dict[str, object] = {
            "time_scale": ts,
            "wall_s": round(wall, 2),
            "unfinished": sum(r.finish_s is None for r in records),
            "sim_ms": {k: round(v * 1e3, 2) for k, v in sim.items()},
            "engine_ms": {k: round(v * 1e3, 2) for k, v in served.items()},
            "client_ms": {k: round(v * 1e3, 2) for k, v in client.items()},
            "engine_diff": {k: round(rel(served[k], sim[k]), 4) for k in METRICS},
            "client_diff": {k: round(rel(client[k], sim[k]), 4) for k in METRICS},
            # Client TTFT minus engine TTFT, in wall ms: the HTTP path a request pays once.
            "http_path_wall_ms": round((client["ttft"] - served["ttft"]) / ts * 1e3, 3),
        }
        rows.append(row)
        print(f"time scale {ts:g}: {wall:.1f} s wall, {row['unfinished']} unfinished")
        for k in METRICS:
            print(
                f"  {k:>4}: sim {sim[k] * 1e3:8.2f} ms | engine {served[k] * 1e3:8.2f} ms "
                f"({rel(served[k], sim[k]):+.1%}) | client {client[k] * 1e3:8.2f} ms "
                f"({rel(client[k], sim[k]):+.1%})"
            )
    described = workload.describe()
    meta = {
        "trace": args.trace,
        "requests": len(workload.requests),
        "rate_scale": args.rate_scale,
        "span_s": described["duration_s"],
        "profile": args.profile,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_at_end": os.getloadavg(),
        "command": "python benchmarks/engine_fidelity.py " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_fidelity.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2, sort_keys=True) + "\n"
    )
    lines = [
        "# Engine fidelity: `l4 engine` against `l4.sim`",
        "",
        f"Command: `{meta['command'].strip()}`. The first {meta['requests']} requests of "
        f"`{args.trace}` (rate x{args.rate_scale:g}, {float(str(meta['span_s'])):.1f} s of "
        f"arrivals), `{args.profile}`, one instance; simulator with round_robin. The engine "
        f"runs as `l4 engine` in its own process (CPU 0), the client in another (CPU 1); "
        f"{meta['cpus']} CPUs, Python {meta['python']}. Load average before / after: "
        f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f} (1 min; the after value counts this "
        "benchmark's own two processes, a before value well above 0 means other jobs shared the "
        "machine).",
        "",
        "Engine = the engine's vLLM metrics (sum / count), measured from a request's arrival "
        "at the engine to the step loop handing its tokens over. Client = as `vllm bench "
        "serve` measures, from sending the request; its TTFT also pays the HTTP path once, "
        "times the time scale (last column, in wall ms).",
        "",
        "| time scale | metric | sim ms | engine ms | engine diff | client ms | client diff "
        "| HTTP path (wall ms) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for k in METRICS:
            s, e, c = (r[f] for f in ("sim_ms", "engine_ms", "client_ms"))
            ed, cd = r["engine_diff"], r["client_diff"]
            assert isinstance(s, dict) and isinstance(e, dict) and isinstance(c, dict)
            assert isinstance(ed, dict) and isinstance(cd, dict)
            http = r["http_path_wall_ms"] if k == "ttft" else ""
            lines.append(
                f"| {r['time_scale']:g} | {k.upper()} | {s[k]:.2f} | {e[k]:.2f} | "
                f"{ed[k]:+.1%} | {c[k]:.2f} | {cd[k]:+.1%} | {http} |"
            )
    (args.out / "engine_fidelity.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
