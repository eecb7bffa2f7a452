"""The official `openai` client through `l4 serve` over real sockets, against emulated engines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.harness import MODEL, engine_config, gateway_over
from l4.engine.faults import FaultConfig
from l4.engine.tokenizer import Tokenizer
from openai_streams import read_chat_stream

openai = pytest.importorskip("openai")


def client(url: str) -> Any:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=30)


async def stream_text(c: Any, **kw: Any) -> tuple[str, str | None, int, set[str]]:
    """(text, finish reason, completion tokens from usage, response ids) of a streamed call."""
    stream = await c.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True}, **kw
    )
    parts, finish, used, ids = [], None, -1, set()
    async for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices:
            assert chunk.choices[0].index == 0
            parts.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
    return "".join(parts), finish, used, ids


def test_completions_and_chat_streaming_and_not() -> None:
    async def main() -> None:
        async with gateway_over([engine_config(0), engine_config(1)]) as run:
            c = client(run.url)
            models = await c.models.list()
            assert [m.id for m in models.data] == [MODEL]
            full = await c.completions.create(
                model=MODEL, prompt="Hello there", max_tokens=12, extra_body={"ignore_eos": True}
            )
            (choice,) = full.choices
            assert choice.finish_reason == "length"
            assert full.usage is not None and full.usage.completion_tokens == 12
            assert full.usage.prompt_tokens == len(Tokenizer().tokenize("Hello there"))
            text, finish, used, ids = await stream_text(
                c, prompt="Hello there", max_tokens=12, extra_body={"ignore_eos": True}
            )
            # Same engine seed and prompt: the same answer, whichever instance served it.
            assert text == choice.text and finish == "length" and used == 12 and len(ids) == 1

            messages = [{"role": "user", "content": "What is L4?"}]
            chat = await c.chat.completions.create(
                model=MODEL, messages=messages, max_completion_tokens=9,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            msg = chat.choices[0].message
            assert msg.role == "assistant" and msg.content
            assert chat.usage is not None and chat.usage.completion_tokens == 9
            stream = await c.chat.completions.create(
                model=MODEL, messages=messages, max_completion_tokens=9, stream=True,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            text, roles, reasons = await read_chat_stream(stream)
            assert text == msg.content
            assert "assistant" in roles and reasons[-1] == "length"
            await c.close()

    asyncio.run(main())


def test_a_forced_cascade_is_one_stream_of_exactly_the_tokens_asked() -> None:
    """Boundary at 300 tokens: a 100-token prompt asking for 500 tokens crosses it at 200."""

    async def main() -> None:
        engines = [engine_config(i) for i in range(4)]
        async with gateway_over(engines, static_plan=_plan((300,), (2, 2))) as run:
            c = client(run.url)
            _text, finish, used, ids = await stream_text(
                c, prompt=[17] * 100, max_tokens=500, extra_body={"ignore_eos": True}
            )
            assert finish == "length" and used == 500 and len(ids) == 1
            metrics = await _metrics(run.url)
            assert metrics['l4_migrations_total{outcome="ok",reason="cascade"}'] >= 1.0
            state = run.gateway.state()
            assert [s["hi_tokens"] for s in state["stages"]] == [300, None]
            moved = [m for m in state["recent_migrations"] if m["reason"] == "cascade"]
            assert moved and moved[0]["src"] in (0, 1) and moved[0]["dst"] in (2, 3)
            assert moved[0]["length_tokens"] >= 300
            await c.close()

    asyncio.run(main())


def test_an_engine_crash_mid_stream_does_not_break_the_clients_stream() -> None:
    async def main() -> None:
        crashing = engine_config(0, faults=FaultConfig(crash_after_tokens=40))
        async with gateway_over([crashing, engine_config(1)], policy="round_robin") as run:
            c = client(run.url)
            _text, finish, used, _ = await stream_text(
                c, prompt="tell me a long story", max_tokens=120, extra_body={"ignore_eos": True}
            )
            assert finish == "length" and used == 120
            metrics = await _metrics(run.url)
            assert metrics['l4_migrations_total{outcome="ok",reason="failure"}'] >= 1.0
            assert not run.gateway.cluster.instances[0].healthy
            # Later requests go to the instance that is left.
            _, finish2, used2, _ = await stream_text(
                c, prompt="again", max_tokens=10, extra_body={"ignore_eos": True}
            )
            assert finish2 == "length" and used2 == 10
            await c.close()

    asyncio.run(main())


def _plan(boundaries: tuple[int, ...], sizes: tuple[int, ...]) -> Any:
    from l4.views import StaticPlan

    return StaticPlan(boundaries_tokens=boundaries, stage_sizes=sizes)


async def _metrics(url: str) -> dict[str, float]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
