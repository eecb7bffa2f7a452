"""Fault injection over real sockets: seeded errors, a crash after N tokens, a slow-down."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from engine.sockets import predicted_busy_s, serving, serving_engine, token_ends_s
from l4.engine.faults import ErrorDraws, FaultConfig
from l4.engine.server import EngineConfig
from l4.errors import ValidationError


def with_faults(config: EngineConfig, **faults: Any) -> EngineConfig:
    return replace(config, faults=FaultConfig(**faults))


@pytest.mark.parametrize(
    "faults",
    [
        {"error_rate": -0.1},
        {"error_rate": 1.5},
        {"error_status": 404},
        {"crash_after_tokens": 0},
        {"slowdown": 0.0},
    ],
)
def test_bad_fault_values_are_validation_errors(faults: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FaultConfig(**faults)


def test_seeded_errors_fail_the_drawn_requests_with_a_vllm_error_body(
    make_config: Callable[..., EngineConfig],
) -> None:
    config = with_faults(make_config(), error_rate=0.3, error_status=503)
    draws = ErrorDraws(0.3, seed=config.seed, instance_id=0)
    expected = [503 if draws.fail_next() else 200 for _ in range(40)]
    assert 5 <= expected.count(503) <= 20  # the draw is a real mix, not all or nothing

    async def main() -> None:
        async with serving(config) as url, httpx.AsyncClient(base_url=url, timeout=5) as c:
            statuses = []
            for i in range(40):
                if i == 10:  # a client mistake is still a 400 and takes no draw
                    bad = await c.post("/v1/completions", json={"prompt": "a", "n": 2})
                    assert bad.status_code == 400
                stream = i % 2 == 1
                req = {"prompt": [3, i + 1], "max_tokens": 2, "stream": stream}
                r = await c.post("/v1/completions", json=req)
                statuses.append(r.status_code)
                if r.status_code == 503:
                    err = r.json()["error"]
                    assert err["type"] == "ServiceUnavailableError" and err["code"] == 503
                    assert set(err) == {"message", "type", "param", "code"}
                elif stream:
                    assert r.text.endswith("data: [DONE]\n\n")
            assert statuses == expected
            assert (await c.get("/health")).status_code == 200
            metrics = (await c.get("/metrics")).text
            ok = expected.count(200)
            assert (
                f'vllm:generation_tokens_total{{engine="0",model_name="test-model"}} {2 * ok}.0'
                in (metrics)
            )

    asyncio.run(main())


async def _stream_tokens(c: httpx.AsyncClient, prompt: list[int]) -> tuple[int, bool, bool]:
    """(tokens received, saw [DONE], connection cut) of one long streaming request."""
    req = {"prompt": prompt, "max_tokens": 5000, "ignore_eos": True, "stream": True,
           "return_token_ids": True}  # fmt: skip
    tokens, done = 0, False
    try:
        async with c.stream("POST", "/v1/completions", json=req) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    tokens += len(
                        json.loads(line.removeprefix("data: "))["choices"][0]["token_ids"]
                    )
    except httpx.RemoteProtocolError:
        return tokens, done, True
    return tokens, done, False


async def _health_fails(url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=url, timeout=1) as fresh:
            return (await fresh.get("/health")).status_code != 200
    except httpx.TransportError:
        return True


def test_crash_after_n_tokens_cuts_streams_drops_requests_and_closes_the_port(
    make_config: Callable[..., EngineConfig],
) -> None:
    n = 1000
    config = with_faults(make_config(time_scale=10.0), crash_after_tokens=n)

    async def main() -> None:
        async with serving_engine(config) as (url, server):
            core = server.engine.core
            async with httpx.AsyncClient(base_url=url, timeout=5) as c:
                assert (await c.get("/health")).status_code == 200
                first = asyncio.create_task(_stream_tokens(c, [1] * 20))
                second = asyncio.create_task(_stream_tokens(c, [2] * 40))
                whole = {"prompt": [9] * 30, "max_tokens": 5000, "ignore_eos": True}
                plain = asyncio.create_task(c.post("/v1/completions", json=whole))
                async with asyncio.timeout(2):  # all three in the engine before the crash
                    while core.num_tracked < 3:
                        await asyncio.sleep(0.001)
                assert not core.crashed
                results = await asyncio.gather(first, second, plain, return_exceptions=True)
            *streams, dropped = results
            # Both streams got tokens, then lost the connection, never seeing [DONE].
            for got in streams:
                assert isinstance(got, tuple)
                tokens, done, cut = got
                assert tokens > 0 and cut and not done
            # The non-streaming request got no answer at all: its connection was dropped.
            assert isinstance(dropped, httpx.RemoteProtocolError)
            assert core.crashed and core.tokens_emitted == n
            assert sum(t[0] for t in streams if isinstance(t, tuple)) < n
            async with asyncio.timeout(3):
                while not await _health_fails(url):
                    await asyncio.sleep(0.01)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient(base_url=url, timeout=1) as fresh:
                    await fresh.get("/health")

    asyncio.run(main())


def test_slowdown_stretches_the_token_timeline(make_config: Callable[..., EngineConfig]) -> None:
    """``--slowdown 3`` reaches the served engine: its steps, as planned, take three times the
    model's, and no token comes earlier than that. Load-proof: the planned step times do not
    depend on the clock, and a busy CPU only delays tokens (the exact timeline is tested against
    a fake clock in test_core.py)."""
    base = make_config(time_scale=1.0)
    config = with_faults(base, slowdown=3.0)
    prompt, n = [5] * 100, 40
    ends = token_ends_s(base, len(prompt), n)

    async def main() -> None:
        async with (
            serving_engine(config) as (url, server),
            httpx.AsyncClient(base_url=url, timeout=5) as c,
        ):
            stamps: list[float] = []
            req = {"prompt": prompt, "max_tokens": n, "ignore_eos": True, "stream": True,
                   "return_token_ids": True}  # fmt: skip
            sent = time.perf_counter()
            async with c.stream("POST", "/v1/completions", json=req) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line.removeprefix("data: "))
                        stamps += [time.perf_counter()] * len(chunk["choices"][0]["token_ids"])
            assert len(stamps) == n
            assert predicted_busy_s(server) == pytest.approx(3.0 * ends[-1], rel=1e-9)
            assert stamps[-1] - sent >= 3.0 * ends[-1] / base.time_scale - 1e-3

    asyncio.run(main())
