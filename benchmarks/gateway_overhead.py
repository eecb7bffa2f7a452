"""What the gateway adds: the same client, the same engines, direct versus through `l4 serve`.

Per configuration (S concurrent streams): K emulated instances serve in one process (`l4
engine`), the gateway in another (`l4 serve --policy round_robin`, so that both phases spread
requests alike), and this process is the client: S closed-loop workers, each sending a streaming
completion of P prompt token ids for exactly O output tokens, again and again for D seconds
after a warm-up. The direct phase spreads requests over the engines round robin itself; the
gateway phase sends everything to the gateway. Reported per phase: TTFT (send to first token)
and ITL (every gap between streamed chunks) p50 / p99 in wall milliseconds, and for the gateway
its CPU seconds over the measured window (from /proc) and the tokens it relayed in it:
streamed tokens per gateway CPU-second, i.e. per core.

The engines' time scale is chosen per row so that the token rate stays within what the machine's
cores sustain for engines, gateway and client together (a slower scale means longer emulated
steps, hence fewer tokens per second, not a different relay path). Each row runs `--repeats`
times; the table shows medians over repeats. Writes docs/benchmarks/gateway_overhead.{json,md}.

    python benchmarks/gateway_overhead.py [--streams 100,500] [--time-scales 1,0.25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT_TOKEN_ID = 1000


@dataclass
class Samples:
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0


def free_ports(n: int) -> int:
    """A base port with n free consecutive ports after it (best effort, then bound by children)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n >= 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


async def wait_up(url: str, timeout_s: float = 60.0) -> None:
    async with aiohttp.ClientSession() as s:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_request(
    session: aiohttp.ClientSession, url: str, prompt: int, output: int, out: Samples, record: bool
) -> None:
    body = {
        "prompt": [PROMPT_TOKEN_ID] * prompt,
        "max_tokens": output,
        "ignore_eos": True,
        "stream": True,
    }
    t0 = time.perf_counter()
    last: float | None = None
    tokens = 0
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
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
                if record:
                    if last is None:
                        out.ttft_ms.append((now - t0) * 1e3)
                    else:
                        out.itl_ms.append((now - last) * 1e3)
                last = now
    except aiohttp.ClientError:
        out.errors += 1
        return
    if tokens != output:
        out.errors += 1
    if record:
        out.tokens += tokens


async def load(
    urls: list[str], streams: int, prompt: int, output: int, warmup_s: float, measure_s: float,
    on_measure: list[float],
) -> Samples:  # fmt: skip
    """S closed-loop workers; only requests sent inside the measured window are recorded."""
    out = Samples()
    rr = itertools.cycle(urls)
    connector = aiohttp.TCPConnector(limit=streams + 16)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        t_measure = start + warmup_s
        t_end = t_measure + measure_s

        async def worker() -> None:
            while (now := time.perf_counter()) < t_end:
                record = now >= t_measure
                await one_request(session, next(rr), prompt, output, out, record)

        async def mark() -> None:
            await asyncio.sleep(warmup_s)
            on_measure.append(time.perf_counter())

        await asyncio.gather(mark(), *(worker() for _ in range(streams)))
        on_measure.append(time.perf_counter())
    return out


@contextlib.contextmanager
def processes(
    instances: int, time_scale: float, policy: str
) -> Iterator[tuple[list[str], str, int]]:
    base = free_ports(instances + 1)
    engine_cmd = [
        sys.executable, "-m", "l4", "engine", "--instances", str(instances),
        "--base-port", str(base + 1), "--time-scale", str(time_scale),
    ]  # fmt: skip
    urls = [f"http://127.0.0.1:{base + 1 + i}" for i in range(instances)]
    gw_cmd = [
        sys.executable, "-m", "l4", "serve", "--port", str(base), "--policy", policy,
        "--log-level", "warning", "--time-scale", str(time_scale),
    ]  # fmt: skip
    for u in urls:
        gw_cmd += ["--backend", u]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    engines = subprocess.Popen(engine_cmd, **quiet)  # type: ignore[call-overload]
    gateway: subprocess.Popen[bytes] | None = None
    try:
        for u in urls:
            asyncio.run(wait_up(u))
        gateway = subprocess.Popen(gw_cmd, **quiet)  # type: ignore[call-overload]
        asyncio.run(wait_up(f"http://127.0.0.1:{base}"))
        yield urls, f"http://127.0.0.1:{base}", gateway.pid
    finally:
        for proc in (gateway, engines):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_row(args: argparse.Namespace, streams: int, time_scale: float) -> dict[str, float]:
    with processes(args.instances, time_scale, args.policy) as (urls, gw_url, gw_pid):
        marks: list[float] = []
        direct = asyncio.run(
            load(urls, streams, args.prompt, args.output, args.warmup, args.duration, marks)
        )
        marks = []
        cpu0 = cpu_seconds(gw_pid)
        via = asyncio.run(
            load([gw_url], streams, args.prompt, args.output, args.warmup, args.duration, marks)
        )
        cpu1 = cpu_seconds(gw_pid)
    # The gateway's CPU over the whole gateway phase, against every token it relayed in it
    # (warm-up included: the CPU counter cannot tell the two apart).
    phase_tokens = via.tokens * (args.warmup + args.duration) / args.duration
    row = {
        "streams": streams,
        "time_scale": time_scale,
        "direct_ttft_p50_ms": pct(direct.ttft_ms, 50),
        "direct_ttft_p99_ms": pct(direct.ttft_ms, 99),
        "direct_itl_p50_ms": pct(direct.itl_ms, 50),
        "direct_itl_p99_ms": pct(direct.itl_ms, 99),
        "gateway_ttft_p50_ms": pct(via.ttft_ms, 50),
        "gateway_ttft_p99_ms": pct(via.ttft_ms, 99),
        "gateway_itl_p50_ms": pct(via.itl_ms, 50),
        "gateway_itl_p99_ms": pct(via.itl_ms, 99),
        "direct_tokens_per_s": direct.tokens / args.duration,
        "gateway_tokens_per_s": via.tokens / args.duration,
        "gateway_cpu_s": cpu1 - cpu0,
        "tokens_per_gateway_cpu_s": phase_tokens / max(cpu1 - cpu0, 1e-9),
        "errors": direct.errors + via.errors,
    }
    for k in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99"):
        row[f"added_{k}_ms"] = row[f"gateway_{k}_ms"] - row[f"direct_{k}_ms"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="100,500")
    p.add_argument("--time-scales", default="1,0.25", help="one per --streams entry")
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--policy", default="round_robin")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--output", type=int, default=128)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=3)
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
        rows.append({k: statistics.median(run[k] for run in runs) for k in runs[0]})
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
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
    assert isinstance(rows, list)
    lines = [
        "# Gateway overhead: direct versus through `l4 serve`",
        "",
        "Generated by `python benchmarks/gateway_overhead.py`; medians over repeats. Wall ms.",
        "",
        "| streams | time scale | TTFT p50 direct / gw (added) | TTFT p99 direct / gw (added) "
        "| ITL p50 direct / gw (added) | ITL p99 direct / gw (added) | tokens/s direct / gw "
        "| tokens per gateway CPU-s | errors |",
        "|---:|---:|---|---|---|---|---|---:|---:|",
    ]
    for r in rows:

        def trio(k: str, r: dict[str, float] = r) -> str:
            return (
                f"{r[f'direct_{k}_ms']:.2f} / {r[f'gateway_{k}_ms']:.2f} "
                f"({r[f'added_{k}_ms']:+.2f})"
            )

        lines.append(
            f"| {r['streams']:.0f} | {r['time_scale']:g} | {trio('ttft_p50')} | "
            f"{trio('ttft_p99')} | {trio('itl_p50')} | {trio('itl_p99')} | "
            f"{r['direct_tokens_per_s']:,.0f} / {r['gateway_tokens_per_s']:,.0f} | "
            f"{r['tokens_per_gateway_cpu_s']:,.0f} | {r['errors']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
