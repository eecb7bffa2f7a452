"""End to end over a real socket: uvicorn in-process on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn

from l4.costmodel.step import StepCostModel
from l4.engine.server import EngineConfig, build_app
from l4.instance import Instance, Sequence
from l4.request import RequestSpec


@asynccontextmanager
async def serving(config: EngineConfig) -> AsyncIterator[str]:
    server = uvicorn.Server(uvicorn.Config(build_app(config), log_level="warning", lifespan="on"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async with _serve(server, sock):
            yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def _serve(server: uvicorn.Server, sock: socket.socket) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(server.serve(sockets=[sock]))
        try:
            async with asyncio.timeout(5):
                while not server.started:
                    await asyncio.sleep(0.005)
            yield
        finally:
            server.should_exit = True


def decode_span_s(config: EngineConfig, input_tokens: int, output_tokens: int) -> float:
    """Emulated seconds from the first to the last token of a lone request (offline stepping)."""
    inst = Instance(0, config.instance_config, StepCostModel(config.profile))
    inst.admit(Sequence(RequestSpec(request_id=0, arrival_s=0.0, input_tokens=input_tokens,
                                    output_tokens=output_tokens)))  # fmt: skip
    t, ends = 0.0, []
    while (plan := inst.plan(t, 1)) is not None:
        t = plan.end_s
        inst.complete(t)
        ends.append(t)
    return ends[-1] - ends[0]


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
