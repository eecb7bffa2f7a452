"""Helpers of the socket tests: an EngineServer on a free port of 127.0.0.1, offline timings."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from l4.costmodel.step import StepCostModel
from l4.engine.server import EngineConfig
from l4.engine.serving import EngineServer
from l4.instance import Instance, Sequence
from l4.request import RequestSpec


@asynccontextmanager
async def serving(config: EngineConfig) -> AsyncIterator[str]:
    async with serving_engine(config) as (url, _):
        yield url


@asynccontextmanager
async def serving_engine(config: EngineConfig) -> AsyncIterator[tuple[str, EngineServer]]:
    """An EngineServer on a free port; yields its URL and the server, stops it on exit."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it Nagle holds small response writes for the peer's delayed ACK (~40 ms).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = EngineServer(config, sock=sock)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.serve())
            try:
                async with asyncio.timeout(5):
                    while not server.started:
                        await asyncio.sleep(0.005)
                yield f"http://127.0.0.1:{port}", server
            finally:
                server.stop()


def token_ends_s(config: EngineConfig, input_tokens: int, output_tokens: int) -> list[float]:
    """Emulated end of every step of a lone request from its arrival (offline stepping)."""
    inst = Instance(0, config.instance_config, StepCostModel(config.profile))
    inst.admit(Sequence(RequestSpec(request_id=0, arrival_s=0.0, input_tokens=input_tokens,
                                    output_tokens=output_tokens)))  # fmt: skip
    t, ends = 0.0, []
    while (plan := inst.plan(t, 1)) is not None:
        t = plan.end_s
        inst.complete(t)
        ends.append(t)
    return ends


def decode_span_s(config: EngineConfig, input_tokens: int, output_tokens: int) -> float:
    """Emulated seconds from the first to the last token of a lone request (offline stepping)."""
    ends = token_ends_s(config, input_tokens, output_tokens)
    return ends[-1] - ends[0]


def predicted_busy_s(server: EngineServer) -> float:
    """Emulated seconds of every step the engine ran, as its cost model predicted them.

    Independent of how late the loop woke (a busy machine): the sum of the plans' step times."""
    core = server.engine.core
    return sum(s.predicted_s for s in core.step_log) * core.time_scale
