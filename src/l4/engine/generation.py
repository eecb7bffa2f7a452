"""What the emulated model "generates": deterministic lengths and token ids.

Guarantees: the natural output length (where the model would emit EOS) and every generated token
are pure functions of (engine seed, prompt token ids), so replaying a trace gives identical
responses. Natural lengths are drawn from the ShareGPT output-length column bundled with L4 (the
empirical distribution, one row picked by a hash), so an unconstrained request looks like a chat
answer. The length actually served then follows vLLM's rules:

    ignore_eos          -> exactly max_tokens
    otherwise           -> clamp(natural, min_tokens, max_tokens)

and finish_reason is "length" when max_tokens was the binding limit, "stop" otherwise.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from l4.engine.tokenizer import Tokenizer
from l4.workload.traces import load_bundled


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputPlan:
    """How many tokens a request will produce and why it will stop (before stop strings)."""

    output_tokens: int
    finish_reason: str  # "length" or "stop"


def request_key(seed: int, prompt_ids: Sequence[int]) -> int:
    """A stable 64-bit key of (seed, prompt)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(seed.to_bytes(8, "little", signed=True))
    h.update(np.asarray(prompt_ids, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little")


class OutputModel:
    """Natural lengths and generated tokens; immutable after construction."""

    __slots__ = ("_lengths", "_tokenizer")

    def __init__(self, tokenizer: Tokenizer, lengths: npt.NDArray[np.int64] | None = None) -> None:
        self._tokenizer = tokenizer
        if lengths is None:
            lengths = load_bundled("sharegpt").output_tokens
        self._lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)

    def natural_length(self, key: int) -> int:
        return int(self._lengths[key % len(self._lengths)])

    def plan(self, key: int, *, max_tokens: int, min_tokens: int, ignore_eos: bool) -> OutputPlan:
        if ignore_eos:
            return OutputPlan(output_tokens=max_tokens, finish_reason="length")
        n = max(self.natural_length(key), min_tokens)
        if n >= max_tokens:
            return OutputPlan(output_tokens=max_tokens, finish_reason="length")
        return OutputPlan(output_tokens=n, finish_reason="stop")

    def tokens(self, key: int) -> Iterator[int]:
        """The generated token ids of the request with this key, in order, without end."""
        rng = random.Random(key)
        words = self._tokenizer.word_ids
        while True:
            yield words[rng.randrange(len(words))]
