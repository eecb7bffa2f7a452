"""The official `openai` Python client against `l4 engine` over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest

from engine.sockets import serving
from l4.engine.faults import FaultConfig
from l4.engine.server import EngineConfig
from openai_streams import read_chat_stream

openai = pytest.importorskip("openai")


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=10)


def test_completions_and_chat_streaming_and_not(config: EngineConfig) -> None:
    async def main() -> None:
        async with serving(config) as url:
            c = client(url)
            models = await c.models.list()
            assert [m.id for m in models.data] == ["test-model"]

            full = await c.completions.create(
                model="test-model", prompt="Hello there", max_tokens=12,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            (choice,) = full.choices
            assert choice.finish_reason == "length" and len(choice.text.split()) == 12
            assert full.usage is not None and full.usage.completion_tokens == 12

            stream = await c.completions.create(
                model="test-model", prompt="Hello there", max_tokens=12, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )  # fmt: skip
            texts, finish, usage = [], None, None
            async for chunk in stream:
                if chunk.choices:
                    texts.append(chunk.choices[0].text)
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage is not None:
                    usage = chunk.usage
            # Same seed and prompt: the stream spells out the same answer.
            assert "".join(texts) == choice.text and finish == "length"
            assert usage is not None and usage.completion_tokens == 12

            messages = [{"role": "user", "content": "What is L4?"}]
            chat = await c.chat.completions.create(
                model="test-model", messages=messages, max_completion_tokens=9,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            msg = chat.choices[0].message
            assert msg.role == "assistant" and msg.content is not None
            assert len(msg.content.split()) == 9 and chat.choices[0].finish_reason == "length"
            assert chat.usage is not None and chat.usage.completion_tokens == 9

            chat_stream = await c.chat.completions.create(
                model="test-model", messages=messages, max_completion_tokens=9, stream=True,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            text, roles, reasons = await read_chat_stream(chat_stream)
            assert text == msg.content
            assert "assistant" in roles and reasons[-1] == "length"
            await c.close()

    asyncio.run(main())


def test_errors_map_to_the_clients_exception_classes(
    make_config: Callable[..., EngineConfig],
) -> None:
    failing = replace(make_config(), faults=FaultConfig(error_rate=1.0, error_status=500))

    async def main() -> None:
        async with serving(make_config()) as url:
            c = client(url)
            with pytest.raises(openai.BadRequestError):
                await c.completions.create(model="test-model", prompt="a", n=2)
            with pytest.raises(openai.NotFoundError):
                await c.completions.create(model="other", prompt="a")
            await c.close()
        async with serving(failing) as url:
            c = client(url)
            with pytest.raises(openai.InternalServerError) as info:
                await c.completions.create(model="test-model", prompt="a", max_tokens=3)
            assert info.value.status_code == 500
            with pytest.raises(openai.InternalServerError):
                await c.chat.completions.create(
                    model="test-model", messages=[{"role": "user", "content": "a"}], stream=True
                )
            await c.close()

    asyncio.run(main())
