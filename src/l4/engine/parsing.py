"""Request bodies to validated requests, off the step loop's path when they are large.

Guarantees:

* `BodyParser.parse(kind, chunks)` returns what `parse_now(kind, b"".join(chunks), ...)` returns
  (or raises the same `ValidationError`), wherever it ran.
* A body of at most `offload_bytes` is parsed in the event loop (a few milliseconds at most).
  A larger one is decoded, validated and tokenised in a worker process (one per parser, spawned
  by `start()` or on first use, stopped by `close()`), so neither the step loop nor other
  streams wait for it. A thread would not do: JSON decoding holds the GIL for its whole duration
  (about 0.5 s for 15 MB of token ids) and tokenising holds it between switches. The event loop
  never even holds a large body whole: once it grows past `offload_bytes`, its chunks are
  written to a temporary file as they arrive (deleted once parsed) and the worker reads that,
  because one join or pickle of 30 MB alone stalls the loop for 100-250 ms on a loaded VM.
  One parser may serve several engines of one process.
* Generation prompts are tokenised at most `max_prompt_tokens` + 1 tokens far (see `protocol`);
  /tokenize and /detokenize answers come back JSON-encoded, so a huge one costs the event loop a
  copy of bytes, not the encoding of millions of ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import tempfile
from collections.abc import AsyncIterable, Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal

from l4.engine.protocol import (
    GenerateRequest,
    TokenizerAnswer,
    decode_json,
    parse_chat,
    parse_completion,
    parse_detokenize,
    parse_tokenize,
)
from l4.engine.tokenizer import Tokenizer
from l4.errors import InvariantError

Kind = Literal["completion", "chat", "tokenize", "detokenize"]
Parsed = GenerateRequest | TokenizerAnswer
# Bodies up to this size are parsed inline: about 2-3 ms of tokenising at most.
DEFAULT_OFFLOAD_BYTES = 16 * 1024


def parse_now(kind: Kind, raw: bytes, tok: Tokenizer, max_prompt_tokens: int) -> Parsed:
    """Decode and validate one body, here and now (`max_prompt_tokens`: the context length)."""
    body = decode_json(raw)
    parsers: dict[str, Callable[[Any], Parsed]] = {
        "completion": lambda b: parse_completion(b, tok, max_prompt_tokens=max_prompt_tokens),
        "chat": lambda b: parse_chat(b, tok, max_prompt_tokens=max_prompt_tokens),
        "tokenize": lambda b: parse_tokenize(b, tok, max_model_len=max_prompt_tokens),
        "detokenize": lambda b: parse_detokenize(b, tok),
    }
    return parsers[kind](body)


@functools.cache
def _worker_tokenizer() -> Tokenizer:
    # One per worker process, built on its first body (the tokenizer is deterministic).
    return Tokenizer()


def _parse_in_worker(kind: Kind, path: str, max_prompt_tokens: int) -> Parsed:
    return parse_now(kind, Path(path).read_bytes(), _worker_tokenizer(), max_prompt_tokens)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _warm_up() -> None:
    _worker_tokenizer()


class BodyParser:
    """Parses request bodies inline or, above `offload_bytes`, in a worker process."""

    def __init__(self, tokenizer: Tokenizer, *, offload_bytes: int = DEFAULT_OFFLOAD_BYTES) -> None:
        self._tokenizer = tokenizer
        self.offload_bytes = offload_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._warm: Future[None] | None = None
        self.num_offloaded = 0

    def start(self) -> None:
        """Spawn the worker now (it takes a second), so the first large body does not wait."""
        self._warm = self._worker().submit(_warm_up)

    async def wait_warm(self, timeout_s: float = 60.0) -> None:
        """Until the worker `start` spawned is ready: a server that announces itself after this
        serves its first large body as fast as its later ones (not ~1 s late, the spawn)."""
        if self._warm is not None:
            await asyncio.wait_for(asyncio.wrap_future(self._warm), timeout_s)

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # "spawn": a fork would copy the event loop and its sockets into the worker.
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def parse(
        self, kind: Kind, chunks: AsyncIterable[bytes], *, max_prompt_tokens: int
    ) -> Parsed:
        """Parse a body arriving in `chunks` (`max_prompt_tokens`: the context length)."""
        held: list[bytes] = []
        size = 0
        spool: int | None = None
        path: str | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if spool is not None:
                    _write_all(spool, chunk)
                    continue
                held.append(chunk)
                if size > self.offload_bytes:
                    spool, path = tempfile.mkstemp(prefix="l4-body-")
                    for part in held:
                        _write_all(spool, part)
                    held = []
            if path is None:
                return parse_now(kind, b"".join(held), self._tokenizer, max_prompt_tokens)
            assert spool is not None
            os.close(spool)
            spool = None
            return await self._in_worker(kind, path, max_prompt_tokens)
        finally:
            if spool is not None:
                os.close(spool)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    async def _in_worker(self, kind: Kind, path: str, max_prompt_tokens: int) -> Parsed:
        pool = self._worker()
        self.num_offloaded += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, _parse_in_worker, kind, path, max_prompt_tokens)
        except BrokenProcessPool:
            self.close()  # the next large body gets a fresh worker
            raise InvariantError("the body-parsing worker process died") from None

    def close(self) -> None:
        """Stop the worker process (if any) now, even in the middle of a body."""
        pool, self._pool = self._pool, None
        self._warm = None
        if pool is None:
            return
        # A worker may be deep in a huge /tokenize; waiting for it would stall the shutdown.
        # (Python 3.14 has ProcessPoolExecutor.terminate_workers(); before it, this.)
        workers = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=5)
