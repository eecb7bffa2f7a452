"""What an official `openai` client reads from a streamed chat completion, for the engine's and
the gateway's API tests alike."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any


async def read_chat_stream(stream: AsyncIterable[Any]) -> tuple[str, set[str | None], list[Any]]:
    """(the concatenated content, every delta's role, every chunk's finish_reason)."""
    parts: list[str] = []
    roles: set[str | None] = set()
    reasons: list[Any] = []
    async for chunk in stream:
        delta = chunk.choices[0].delta
        roles.add(delta.role)
        parts.append(delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    return "".join(parts), roles, reasons
