from __future__ import annotations

from itertools import islice

import numpy as np

from l4.engine.generation import OutputModel, request_key
from l4.engine.tokenizer import Tokenizer

MODEL = OutputModel(Tokenizer())


def test_ignore_eos_gives_exactly_max_tokens() -> None:
    plan = MODEL.plan(123, max_tokens=77, min_tokens=0, ignore_eos=True)
    assert (plan.output_tokens, plan.finish_reason) == (77, "length")


def test_natural_length_is_clamped_by_min_and_max_tokens() -> None:
    key = request_key(0, [1, 2, 3])
    natural = MODEL.natural_length(key)
    short = MODEL.plan(key, max_tokens=natural, min_tokens=0, ignore_eos=False)
    assert (short.output_tokens, short.finish_reason) == (natural, "length")
    free = MODEL.plan(key, max_tokens=natural + 10, min_tokens=0, ignore_eos=False)
    assert (free.output_tokens, free.finish_reason) == (natural, "stop")
    forced = MODEL.plan(key, max_tokens=natural + 10, min_tokens=natural + 5, ignore_eos=False)
    assert forced.output_tokens == natural + 5


def test_lengths_and_tokens_are_deterministic_in_seed_and_prompt() -> None:
    a, b = request_key(1, [5, 6]), request_key(1, [5, 6])
    assert a == b != request_key(2, [5, 6]) != request_key(1, [6, 5])
    assert list(islice(MODEL.tokens(a), 30)) == list(islice(MODEL.tokens(b), 30))


def test_natural_lengths_follow_sharegpt() -> None:
    lengths = np.array([MODEL.natural_length(request_key(0, [i])) for i in range(3000)])
    assert 350 < lengths.mean() < 530  # the bundled ShareGPT output mean is 439
