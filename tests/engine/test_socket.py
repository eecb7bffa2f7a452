"""End to end over a real socket: uvicorn in-process on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest

from engine.sockets import decode_span_s, serving
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
    config = make_config(time_scale=10.0)
    prompt = [5] * 100
    n = 60

    async def main() -> None:
        async with serving(config) as url, httpx.AsyncClient(base_url=url, timeout=5) as c:
            stamps: list[float] = []
            req = {"prompt": prompt, "max_tokens": n, "ignore_eos": True, "stream": True}
            async with c.stream("POST", "/v1/completions", json=req) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line.removeprefix("data: "))
                        tokens = len(chunk["choices"][0]["text"].split())
                        stamps += [time.perf_counter()] * tokens
            assert len(stamps) == n
            predicted = decode_span_s(config, len(prompt), n) / config.time_scale
            measured = stamps[-1] - stamps[0]
            assert measured == pytest.approx(predicted, rel=0.25, abs=0.003)

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
