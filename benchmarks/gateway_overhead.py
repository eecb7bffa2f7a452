"""What the gateway adds: the same requests, the same engines, direct versus through `l4 serve`.

Per configuration (S concurrent streams on average): K emulated instances serve in one child
process (`l4 engine` code), the gateway in another (`l4 serve --policy round_robin`), and this
process is the client. The client replays one open-loop schedule twice — Poisson arrivals at the
rate that keeps S streams open (from the cost model's step time at S/K decodes per instance),
each request a streaming completion of P prompt token ids for exactly O tokens:

* direct: request i goes to engine i mod K (round robin, as the gateway's policy does);
* through the gateway: every request goes to the gateway, whose round robin sends request i to
  the same engine i mod K.

* through a null proxy (`_null_proxy.py`): the same server stack relaying bytes to engine i mod K,
  nothing parsed: what any proxy on this stack and machine adds, the floor under the gateway's.

So the engines see the same requests at the same times, and the differences are the gateway's
(over the null proxy: its own logic's).
Reported per phase: TTFT (send to first token) and ITL (every gap between streamed chunks)
p50 / p99 in wall milliseconds, streamed tokens per second; and for the gateway its CPU seconds
over the phase (from /proc) and the tokens it relayed: streamed tokens per gateway CPU-second,
i.e. per core. The engines' time scale is chosen per row so that the whole machine (engines,
gateway and client on two cores) is not saturated: a saturated machine measures its scheduler,
not the gateway. Each row runs `--repeats` times; the table shows medians over repeats. Writes
docs/benchmarks/gateway_overhead.{json,md}.

    python benchmarks/gateway_overhead.py [--streams 100,500] [--time-scales 0.1,0.02] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from _null_proxy import NullProxy
from l4.costmodel import load_profile
from l4.costmodel.step import StepCostModel
from l4.engine.fleet import EngineFleet
from l4.gateway.config import GatewayConfig
from l4.gateway.process import GatewayProcess

ROOT = Path(__file__).resolve().parents[1]
PROMPT_TOKEN_ID = 1000


@dataclass
class Samples:
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def schedule(args: argparse.Namespace, streams: int, time_scale: float) -> list[float]:
    """Poisson send times (wall seconds) that keep ``streams`` requests open on average."""
    profile = load_profile(args.profile)
    per_instance = max(1, streams // args.instances)
    context = args.prompt + args.output // 2
    step_s = StepCostModel(profile).step_time_s(
        num_decodes=per_instance,
        context_sum_tokens=per_instance * context,
        context_max_tokens=context,
    )
    duration_s = args.output * step_s / time_scale  # one request, in wall seconds
    rate = streams / duration_s
    rng = random.Random(args.seed)
    times, t = [], 0.0
    while t < args.duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes, output: int, out: Samples
) -> None:
    t0 = time.perf_counter()
    last: float | None = None
    tokens = 0
    gaps: list[float] = []
    ttft = None
    try:
        async with session.post(
            url + "/v1/completions", data=body, headers={"content-type": "application/json"}
        ) as resp:
            if resp.status != 200:
                out.errors += 1
                await resp.read()
                return
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                n = data.count(b'"text":')
                if n == 0:
                    continue
                tokens += n
                if last is None:
                    ttft = (now - t0) * 1e3
                else:
                    gaps.append((now - last) * 1e3)
                last = now
    except aiohttp.ClientError:
        out.errors += 1
        return
    if tokens != output or ttft is None:
        out.errors += 1
        return
    out.ttft_ms.append(ttft)
    out.itl_ms.extend(gaps)
    out.tokens += tokens


async def replay(urls: list[str], times: list[float], args: argparse.Namespace) -> Samples:
    out = Samples()
    body = json.dumps(
        {
            "prompt": [PROMPT_TOKEN_ID] * args.prompt,
            "max_tokens": args.output,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def at(i: int, t: float) -> None:
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await one(session, urls[i % len(urls)], body, args.output, out)

        await asyncio.gather(*(at(i, t) for i, t in enumerate(times)))
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _through(
    proxy_url: str, pid: int, times: list[float], args: argparse.Namespace
) -> tuple[Samples, float, float]:
    """Warm the proxy up (its pools, the engines' connections), then replay through it: the
    samples, the wall seconds and the proxy's CPU seconds of the measured replay."""
    asyncio.run(replay([proxy_url], times[: min(len(times), 4 * args.instances)], args))
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    samples = asyncio.run(replay([proxy_url], times, args))
    wall = time.perf_counter() - t0
    return samples, wall, cpu_seconds(pid) - cpu0


def run_row(args: argparse.Namespace, streams: int, time_scale: float) -> dict[str, float]:
    fleet = EngineFleet.emulating(
        args.instances,
        profile=load_profile(args.profile),
        time_scale=time_scale,
        seed=args.seed,
    )
    times = schedule(args, streams, time_scale)
    with fleet as urls:
        direct = asyncio.run(replay(urls, times, args))
        with NullProxy(urls) as null:
            floor, _, floor_cpu = _through(null.url, null.pid, times, args)
        config = GatewayConfig(
            backends=tuple(urls), policy=args.policy, profile=args.profile, log_level="warning"
        )
        with GatewayProcess(config) as gw:
            via, wall, cpu = _through(gw.url, gw.pid, times, args)
    row = {
        "streams": streams,
        "time_scale": time_scale,
        "requests": len(times),
        "direct_tokens": direct.tokens,
        "null_tokens": floor.tokens,
        "gateway_tokens": via.tokens,
        "gateway_tokens_per_s": via.tokens / wall,
        "gateway_cpu_s": cpu,
        "tokens_per_gateway_cpu_s": via.tokens / max(cpu, 1e-9),
        "null_cpu_s": floor_cpu,
        "tokens_per_null_cpu_s": floor.tokens / max(floor_cpu, 1e-9),
        "errors": direct.errors + floor.errors + via.errors,
    }
    for name, samples in (("direct", direct), ("null", floor), ("gateway", via)):
        row[f"{name}_ttft_p50_ms"] = pct(samples.ttft_ms, 50)
        row[f"{name}_ttft_p99_ms"] = pct(samples.ttft_ms, 99)
        row[f"{name}_itl_p50_ms"] = pct(samples.itl_ms, 50)
        row[f"{name}_itl_p99_ms"] = pct(samples.itl_ms, 99)
    for k in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99"):
        row[f"added_{k}_ms"] = row[f"gateway_{k}_ms"] - row[f"direct_{k}_ms"]
        row[f"null_added_{k}_ms"] = row[f"null_{k}_ms"] - row[f"direct_{k}_ms"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="100,500", help="average concurrent streams per row")
    p.add_argument("--time-scales", default="0.1,0.02", help="one per --streams entry")
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--profile", default="h100-llama-3.2-3b")
    p.add_argument("--policy", default="round_robin")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--output", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0, help="wall seconds of arrivals")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = p.parse_args()
    streams = [int(x) for x in args.streams.split(",")]
    scales = [float(x) for x in args.time_scales.split(",")]
    if len(scales) != len(streams):
        p.error("--time-scales needs one value per --streams entry")
    rows = []
    for s, ts in zip(streams, scales, strict=True):
        runs = []
        for r in range(args.repeats):
            row = run_row(args, s, ts)
            print(json.dumps({"repeat": r, **row}), flush=True)
            runs.append(row)
        median = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        rows.append({**median, "runs": runs})
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    md = render(result)
    print(md)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gateway_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "gateway_overhead.md").write_text(md)
    return 0


def render(result: dict[str, object]) -> str:
    rows = result["rows"]
    args = result["args"]
    assert isinstance(rows, list) and isinstance(args, dict)
    lines = [
        "# Gateway overhead: direct versus through `l4 serve`",
        "",
        "Generated by `python benchmarks/gateway_overhead.py`: the same open-loop schedule "
        f"({args['prompt']} prompt token ids + {args['output']} output tokens per request, "
        f"{args['instances']} x {args['profile']} emulated, policy {args['policy']}) sent "
        "direct, through a null proxy (the same server stack relaying bytes: uvicorn + "
        "httptools on uvloop, pooled aiohttp; no parsing, no policy; `benchmarks/_null_proxy.py`) "
        f"and through the gateway; medians over {args['repeats']} repeats, wall ms. The client, "
        "the engines and the proxy share the machine's CPUs. Prompts are token ids, so the "
        "gateway asks no `/tokenize`.",
        "",
        "| streams | time scale | metric | direct | null proxy (added) | gateway (added) "
        "| gateway over the null proxy |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        for k, name in (
            ("ttft_p50", "TTFT p50"),
            ("ttft_p99", "TTFT p99"),
            ("itl_p50", "ITL p50"),
            ("itl_p99", "ITL p99"),
        ):
            lines.append(
                f"| {r['streams']:.0f} | {r['time_scale']:g} | {name} | "
                f"{r[f'direct_{k}_ms']:.2f} | {r[f'null_{k}_ms']:.2f} "
                f"({r[f'null_added_{k}_ms']:+.2f}) | {r[f'gateway_{k}_ms']:.2f} "
                f"({r[f'added_{k}_ms']:+.2f}) | "
                f"{r[f'gateway_{k}_ms'] - r[f'null_{k}_ms']:+.2f} |"
            )
    lines += [
        "",
        "| streams | tokens/s via the gateway | tokens per gateway CPU-s | tokens per null-proxy "
        "CPU-s | errors |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['streams']:.0f} | {r['gateway_tokens_per_s']:,.0f} | "
            f"{r['tokens_per_gateway_cpu_s']:,.0f} | {r['tokens_per_null_cpu_s']:,.0f} | "
            f"{r['errors']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
