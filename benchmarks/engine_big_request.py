"""Other streams while one huge request is parsed: the largest inter-token gap they see.

One emulated instance (h100-llama-3.2-3b, real time) serves in its own process; a client in this
process keeps S streams decoding (prompt P token ids, a long `ignore_eos` answer) and stamps every
SSE chunk as it arrives. After a warm-up, a third process sends ONE huge body, once per case:

* `text`: a ~30 MB completion prompt of English-like words (far beyond the context: the engine
  answers 400, after tokenising at most max_model_len + 1 tokens of it);
* `ids`: a ~15 MB completion prompt of token ids (also beyond the context: 400 after decoding);
* `oversize`: a 40 MB body, above the default 32 MiB limit (413 before it is read).

Per case and engine mode, the inter-token gaps of the S streams are split at the moment the huge
request was sent: the largest gap before (the baseline: same streams, same engine, nothing else
going on) and the largest gap from sending it until 0.5 s after its answer. Engine modes:
`offload` is the default (bodies above 16 KiB parsed in a worker process); `inline` parses every
body in the event loop, as the engine did before (with today's faster, capped tokenizer, so the
old 5.5 s freeze of the issue is not what it shows). Medians over `--repeats` runs. Writes
docs/benchmarks/engine_big_request.{json,md}. Usage:

    python benchmarks/engine_big_request.py [--streams 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from _engine_proc import serve_until_told
from _machine import machine_meta, write_results
from l4.costmodel import load_profile
from l4.engine.parsing import DEFAULT_OFFLOAD_BYTES, BodyParser
from l4.engine.server import EngineConfig
from l4.engine.serving import EngineServer
from l4.engine.tokenizer import Tokenizer
from l4.instance import InstanceConfig

ROOT = Path(__file__).resolve().parents[1]
MODES = {"offload": DEFAULT_OFFLOAD_BYTES, "inline": 1 << 40}
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog,", "data.", "42", "and")


def serve_child(config: EngineConfig, offload_bytes: int, conn: Connection) -> None:
    """The engine process: serve until told to stop, then send back the largest step lateness."""

    async def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
            sock.bind(("127.0.0.1", 0))
            parser = BodyParser(Tokenizer(), offload_bytes=offload_bytes)
            parser.start()  # as `l4 engine` does: the worker is up before the first request
            server = EngineServer(config, sock=sock, parser=parser)
            await serve_until_told(server, sock, conn)
            parser.close()
            late = [s.late_s for s in server.engine.core.step_log]
            conn.send(max(late, default=0.0))

    asyncio.run(run())


def huge_body(case: str) -> bytes:
    rng = random.Random(0)
    if case == "text":
        text = " ".join(rng.choice(WORDS) for _ in range(6_500_000))[:30_000_000]
        return json.dumps({"prompt": text, "max_tokens": 16}).encode()
    if case == "ids":
        ids = [rng.randrange(32768) for _ in range(2_600_000)]
        return json.dumps({"prompt": ids, "max_tokens": 16}).encode()
    return json.dumps({"prompt": "a " * 20_000_000, "max_tokens": 16}).encode()  # 40 MB


def send_child(port: int, body: bytes, conn: Connection) -> None:
    """Send one body over a raw socket; report (sent at, answered at, status)."""
    conn.recv()  # go
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sent = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        with contextlib.suppress(OSError):  # refused early (413): the answer is waiting
            s.sendall(head + body)
        answer = b""
        with contextlib.suppress(OSError):  # a reset after the answer
            while chunk := s.recv(65536):
                answer += chunk
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    conn.send((sent, time.time(), status))


async def stream_stamps(
    c: httpx.AsyncClient, prompt: list[int], stamps: list[float], stop: asyncio.Event
) -> None:
    req = {"prompt": prompt, "max_tokens": 100_000, "ignore_eos": True, "stream": True}
    async with c.stream("POST", "/v1/completions", json=req) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                stamps.append(time.time())
            if stop.is_set():
                break


def gaps(stamps: list[float], start: float, end: float) -> float:
    """The largest gap between consecutive chunks, among those that end in [start, end]."""
    worst = 0.0
    for a, b in itertools.pairwise(stamps):
        if start <= b <= end:
            worst = max(worst, b - a)
    return worst


def run_once(
    config: EngineConfig, mode: str, case: str, streams: int, body: bytes
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    engine = ctx.Process(target=serve_child, args=(config, MODES[mode], child))
    engine.start()
    try:
        port = parent.recv()
        s_parent, s_child = ctx.Pipe()
        sender = ctx.Process(target=send_child, args=(port, body, s_child))
        sender.start()
        prompt = [7] * 200
        per_stream: list[list[float]] = [[] for _ in range(streams)]

        async def client() -> tuple[float, float, int]:
            stop = asyncio.Event()
            limits = httpx.Limits(max_connections=streams + 1)
            async with (
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits
                ) as c,
                asyncio.TaskGroup() as tg,
            ):
                for stamps in per_stream:
                    tg.create_task(stream_stamps(c, prompt, stamps, stop))
                await asyncio.sleep(3.0)  # warm-up and baseline
                s_parent.send("go")
                sent, answered, status = await asyncio.get_running_loop().run_in_executor(
                    None, s_parent.recv
                )
                await asyncio.sleep(0.5)
                stop.set()
            return sent, answered, status

        sent, answered, status = asyncio.run(client())
        sender.join(timeout=30)
        parent.send("stop")
        max_late_s = parent.recv()
    finally:
        engine.join(timeout=30)
    before = max(gaps(s, sent - 2.0, sent) for s in per_stream)  # the 2 s before: steady state
    during = max(gaps(s, sent, answered + 0.5) for s in per_stream)
    return {
        "status": status,
        "answer_s": answered - sent,
        "max_gap_before_ms": before * 1e3,
        "max_gap_during_ms": during * 1e3,
        "engine_max_lateness_ms": max_late_s * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="text,ids,oversize")
    parser.add_argument("--modes", default="offload,inline")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    load_before = os.getloadavg()
    profile = load_profile("h100-llama-3.2-3b")
    config = EngineConfig(profile=profile, instance_config=InstanceConfig.from_profile(profile),
                          served_model_name="m")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for case in args.cases.split(","):
        body = huge_body(case)
        for mode in args.modes.split(","):
            runs = [run_once(config, mode, case, args.streams, body) for _ in range(args.repeats)]
            median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows.append({"case": case, "mode": mode, "body_bytes": len(body), "median": median,
                         "runs": runs})  # fmt: skip
            print(
                f"{case} ({len(body) / 1e6:.1f} MB) {mode}: status {median['status']:.0f} in "
                f"{median['answer_s']:.2f} s; largest gap of the other streams "
                f"{median['max_gap_before_ms']:.1f} ms before, {median['max_gap_during_ms']:.1f} "
                f"ms while it was parsed; engine lateness max "
                f"{median['engine_max_lateness_ms']:.1f} ms",
                flush=True,
            )
    meta = {
        "streams": args.streams,
        "repeats": args.repeats,
        **machine_meta("engine_big_request.py", load_before),
    }
    write_results(args.out, "engine_big_request", meta, rows)
    lines = [
        "# Other streams while one huge request is parsed",
        "",
        f"Command: `{meta['command'].strip()}`. One h100-llama-3.2-3b instance at real time in "
        f"its own process, {args.streams} streams of 200 prompt tokens decoding, one huge body "
        f"sent by a third process; {meta['cpus']} CPUs, Python {meta['python']}, load average "
        f"before {load_before[0]:.2f} (1 min). Medians over {args.repeats} runs. Gaps are wall "
        "milliseconds between consecutive SSE chunks of one stream, largest over all streams.",
        "",
        "| body | engine | answer | answered after | largest gap before | largest gap while "
        "parsed | engine lateness max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["median"]
        lines.append(
            f"| {r['case']} ({r['body_bytes'] / 1e6:.1f} MB) | {r['mode']} | "
            f"{m['status']:.0f} | {m['answer_s']:.2f} s | {m['max_gap_before_ms']:.1f} ms | "
            f"{m['max_gap_during_ms']:.1f} ms | {m['engine_max_lateness_ms']:.1f} ms |"
        )
    (args.out / "engine_big_request.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
