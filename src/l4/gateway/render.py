"""The client's view of a stitched request: OpenAI chunks and bodies, as vLLM shapes them.

Whatever instances served a request, the client sees one response: the same `id`, `created`,
`model` and choice index on every chunk, usage that counts the original prompt and every
generated token once, and the gateway's own `finish_reason` / `stop_reason`. The common streaming
chunk (text only) is written by concatenating pre-encoded JSON around one `orjson.dumps` of the
text: relaying is the gateway's hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

Json = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Piece:
    """What the gateway releases to the client at once: text, its token ids, maybe the end."""

    text: str
    token_ids: tuple[int, ...]
    num_generated: int
    finish_reason: str | None = None
    stop_reason: str | int | None = None


def usage(prompt_tokens: int, completion_tokens: int) -> Json:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": None,
    }


class Renderer:
    """Chunks and bodies of one response (completions or chat)."""

    def __init__(
        self,
        *,
        request_id: str,
        created: int,
        model: str,
        chat: bool,
        prompt_ids: tuple[int, ...] | list[int],
        return_token_ids: bool,
        continuous_usage: bool,
    ) -> None:
        self._chat = chat
        self._prompt_ids = prompt_ids
        self._token_ids = return_token_ids
        self._continuous = continuous_usage
        self._head: Json = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        head = orjson.dumps(self._head)[:-1]  # without the closing brace
        if chat:
            self._fast_open = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
            self._fast_close = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._fast_open = b"data: " + head + b',"choices":[{"index":0,"text":'
            self._fast_close = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'

    # ---- streaming ----------------------------------------------------------------------------
    def opening(self) -> bytes:
        """vLLM's first chat chunk: the assistant role with empty content (none for completions)."""
        if not self._chat:
            return b""
        choice: Json = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        chunk: Json = {**self._head, "choices": [choice]}
        if self._token_ids:
            chunk["prompt_token_ids"] = list(self._prompt_ids)
        return self._event(chunk)

    def chunk(self, piece: Piece, *, first: bool) -> bytes:
        simple = (
            piece.finish_reason is None
            and not self._token_ids
            and not self._continuous
            and not (first and not self._chat and self._token_ids)
        )
        if simple:
            return self._fast_open + orjson.dumps(piece.text) + self._fast_close
        choice: Json = {"index": 0}
        if self._chat:
            choice["delta"] = {"content": piece.text}
        else:
            choice["text"] = piece.text
        choice.update(
            logprobs=None, finish_reason=piece.finish_reason, stop_reason=piece.stop_reason
        )
        if self._token_ids:
            choice["token_ids"] = list(piece.token_ids)
            if first and not self._chat:
                choice["prompt_token_ids"] = list(self._prompt_ids)
        chunk: Json = {**self._head, "choices": [choice]}
        if self._continuous:
            chunk["usage"] = usage(len(self._prompt_ids), piece.num_generated)
        return self._event(chunk)

    def final_usage(self, completion_tokens: int) -> bytes:
        return self._event(
            {**self._head, "choices": [], "usage": usage(len(self._prompt_ids), completion_tokens)}
        )

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"

    @staticmethod
    def error_event(message: str, status: int) -> bytes:
        body = {"error": {"message": message, "type": "ServiceUnavailableError", "code": status}}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    @staticmethod
    def _event(chunk: Json) -> bytes:
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    # ---- one body -----------------------------------------------------------------------------
    def body(self, pieces: list[Piece]) -> Json:
        text = "".join(p.text for p in pieces)
        last = pieces[-1]
        ids = [t for p in pieces for t in p.token_ids]
        choice: Json = {"index": 0}
        if self._chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=last.finish_reason, stop_reason=last.stop_reason)
        out: Json = {
            **self._head,
            "object": "chat.completion" if self._chat else "text_completion",
        }
        if self._token_ids:
            choice["token_ids"] = ids
            if self._chat:
                out["prompt_token_ids"] = list(self._prompt_ids)
            else:
                choice["prompt_token_ids"] = list(self._prompt_ids)
        out["choices"] = [choice]
        out["usage"] = usage(len(self._prompt_ids), last.num_generated)
        return out
