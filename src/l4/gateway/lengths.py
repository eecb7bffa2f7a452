"""A request's prompt in token ids, before it is routed (L4 routes by length).

In order of preference: the ids the client sent; a local tokenizer file (`--tokenizer
tokenizer.json`, through the `tokenizers` library: no round trip, text prompts only); the
engine's own `/tokenize` (vLLM templates a chat there: `messages` with `add_generation_prompt`),
which is exact for the model served. An engine kind without `/tokenize` and without a local
tokenizer gets an estimate of four characters per token, for routing only.

Guarantees: ids are exactly what the engine would compute for the same request when they come
from the client or the engine; large local encodings run in a worker thread so that one huge
prompt cannot stall the streams the gateway relays.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tokenizers import Tokenizer

from l4.errors import BackendError, ValidationError
from l4.gateway.protocol import ClientRequest, is_token_ids, tokenize_body
from l4.gateway.upstream import Backend

# Above this many characters a local encoding goes to a thread (a few ms of CPU and more).
_THREAD_CHARS = 64 * 1024
CHARS_PER_TOKEN_ESTIMATE = 4


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises plain Exceptions for missing or bad files
        raise ValidationError(f"--tokenizer {path}: cannot load it ({exc})") from None


class PromptLengths:
    def __init__(self, *, model: str, tokenizer: Tokenizer | None, engine_tokenizes: bool) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._engine_tokenizes = engine_tokenizes

    async def ids(self, req: ClientRequest, backend: Backend) -> list[int] | None:
        """The prompt's token ids, or None when only an estimate is possible (see `length`)."""
        if req.prompt_ids is not None:
            return list(req.prompt_ids)
        if not req.chat and len(req.prompt_texts) == 1 and self._tokenizer is not None:
            return await self._encode(req.prompt_texts[0])
        if not self._engine_tokenizes or (not req.chat and len(req.prompt_texts) != 1):
            return None
        answer = await backend.post_json("/tokenize", tokenize_body(req, self._model))
        tokens = answer.get("tokens")
        if not is_token_ids(tokens):
            raise BackendError(backend.url, "/tokenize answered without a 'tokens' list")
        return tokens

    def estimate(self, req: ClientRequest) -> int:
        """A length for routing when no ids can be had (batched prompts, engines without
        /tokenize): the longest prompt, by the local tokenizer or four characters per token."""
        texts = list(req.prompt_texts)
        if req.chat:
            for msg in req.body.get("messages", []):
                content = msg.get("content") if isinstance(msg, dict) else None
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):
                    texts.extend(p["text"] for p in content if isinstance(p, dict) and "text" in p)
            texts = ["\n".join(texts)]
        if not texts:
            prompts = req.body.get("prompt")
            if isinstance(prompts, list):
                return max((len(p) for p in prompts if isinstance(p, list)), default=1)
            return 1
        if self._tokenizer is not None:
            return max(len(self._tokenizer.encode(t).ids) for t in texts)
        return max(1, max(len(t) for t in texts) // CHARS_PER_TOKEN_ESTIMATE)

    async def _encode(self, text: str) -> list[int]:
        tok = self._tokenizer
        if tok is None:
            raise ValidationError("no local tokenizer")
        if len(text) < _THREAD_CHARS:
            return list(tok.encode(text).ids)
        encoding = await asyncio.to_thread(tok.encode, text)
        return list(encoding.ids)
