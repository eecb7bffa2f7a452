"""Turning a request's produced-token count into text deltas, with stop strings.

Guarantees: `deltas` yields, in order, pieces of text whose concatenation is the response text;
the last delta carries the finish reason ("length", "stop" or "abort"). A stop string (checked
once `min_tokens` tokens exist, as vLLM does) ends generation with the text cut before it and
`stop_reason` set to it; while stop strings are active, the last `len(longest stop) - 1`
characters are held back so no part of a stop string is ever streamed. When the generator is
closed before its end (client gone, stop string hit), the request is aborted in the engine (its
metrics count it as finished by "stop" after a stop string, as abandoned otherwise). When the
engine crashes (fault injection), the deltas end without a finish reason after the text of the
tokens emitted before the crash: the caller then cuts the response instead of completing it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from l4.engine.core import EngineCore, Handle
from l4.engine.generation import OutputModel, OutputPlan
from l4.engine.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True, kw_only=True)
class Delta:
    text: str
    token_ids: tuple[int, ...]
    num_generated: int
    finish_reason: str | None = None
    stop_reason: str | None = None


def _find_stop(text: str, start: int, stops: tuple[str, ...]) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


async def deltas(
    *,
    core: EngineCore,
    handle: Handle,
    plan: OutputPlan,
    outputs: OutputModel,
    tokenizer: Tokenizer,
    key: int,
    stop: tuple[str, ...],
    min_tokens: int,
) -> AsyncGenerator[Delta, None]:
    tokens = outputs.tokens(key)
    hold = max((len(s) for s in stop), default=1) - 1
    text = ""
    sent = 0
    have = 0
    pending: list[int] = []
    stopped = False  # a stop string ended it: finished, not abandoned
    try:
        while True:
            produced = await handle.wait_beyond(have)
            finish: str | None = None
            stop_reason: str | None = None
            while have < produced:
                tid = next(tokens)
                have += 1
                pending.append(tid)
                before = len(text)
                text += tokenizer.piece(tid)
                if stop and have >= min_tokens:
                    hit = _find_stop(text, max(0, before - hold), stop)
                    if hit is not None:
                        text = text[: hit[0]]
                        finish, stop_reason = "stop", hit[1]
                        stopped = True
                        break
            if finish is None and handle.finished and have >= plan.output_tokens:
                finish = plan.finish_reason
            elif finish is None and handle.done and not handle.crashed:
                finish = "abort"
            end = len(text) if finish is not None else max(sent, len(text) - hold)
            if end > sent or finish is not None:
                yield Delta(
                    text=text[sent:end],
                    token_ids=tuple(pending),
                    num_generated=have,
                    finish_reason=finish,
                    stop_reason=stop_reason,
                )
                sent = end
                pending = []
            if finish is not None or handle.crashed:
                return
    finally:
        if not handle.finished:
            core.abort(handle, finish_reason="stop" if stopped else "abort")
