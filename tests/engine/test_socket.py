"""End to end over a real socket: uvicorn in-process on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest

from engine.sockets import predicted_busy_s, serving_engine, token_ends_s
from l4.engine.server import EngineConfig


def running(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no vllm:num_requests_running in /metrics")


async def until_idle(c: httpx.AsyncClient) -> None:
    async with asyncio.timeout(2):
        while running((await c.get("/metrics")).text) != 0.0:
            await asyncio.sleep(0.01)


def test_stream_pacing_and_disconnect_over_a_socket(
    make_config: Callable[..., EngineConfig],
) -> None:
    """Tokens stream over the socket as the steps produce them, never ahead of the cost model.

    Only what holds on a loaded machine is asserted: a busy CPU can delay a token, never advance
    it. The exact pacing is tested against a fake clock (test_core.py); how close to the model the
    real-time loop stays is a benchmark (benchmarks/engine_fidelity.py)."""
    config = make_config(time_scale=1.0)
    prompt = [5] * 100
    n = 60
    ends = token_ends_s(config, len(prompt), n)

    async def main() -> None:
        async with (
            serving_engine(config) as (url, server),
            httpx.AsyncClient(base_url=url, timeout=5) as c,
        ):
            stamps: list[float] = []
            req = {"prompt": prompt, "max_tokens": n, "ignore_eos": True, "stream": True}
            sent = time.perf_counter()
            async with c.stream("POST", "/v1/completions", json=req) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line.removeprefix("data: "))
                        tokens = len(chunk["choices"][0]["text"].split())
                        stamps += [time.perf_counter()] * tokens
            assert len(stamps) == n
            # The engine ran exactly the steps of the lone request, as the cost model times them.
            assert predicted_busy_s(server) == pytest.approx(ends[-1], rel=1e-9)
            # No token before its step ended (1 ms: timer resolution); a late one is allowed.
            for k in (0, n // 2, n - 1):
                assert stamps[k] - sent >= ends[k] / config.time_scale - 1e-3
            # Streamed, not buffered: the decode steps between the first and the last token take
            # their time whatever the load, so the client sees them spread (half: the first token
            # may reach the client a little late).
            assert stamps[-1] - stamps[0] >= 0.5 * (ends[-1] - ends[0]) / config.time_scale

            # A client that goes away mid-stream frees its sequence.
            long = {**req, "max_tokens": 20_000}
            async with c.stream("POST", "/v1/completions", json=long) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break
            assert running((await c.get("/metrics")).text) in (0.0, 1.0)
            await until_idle(c)

            # So does a non-streaming client that gives up.
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/v1/completions", json={**long, "stream": False}, timeout=0.2)
            await until_idle(c)

    asyncio.run(main())
