from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4.engine import tokenizer as tokenizer_module
from l4.engine.tokenizer import VOCAB_SIZE, Tokenizer
from l4.errors import ValidationError

TOK = Tokenizer()


def test_words_and_punctuation_are_one_token_each() -> None:
    assert len(TOK.tokenize("Hello, world!")) == 4
    assert TOK.tokenize("Hello, world!") == Tokenizer().tokenize("Hello, world!")


def test_generated_words_round_trip_exactly() -> None:
    ids = list(TOK.word_ids[:50:7]) + list(TOK.word_ids[-5:])
    text = TOK.detokenize(ids)
    assert TOK.tokenize(text) == ids


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_tokenize_of_detokenize_is_identity_on_produced_ids(text: str) -> None:
    ids = TOK.tokenize(text)
    assert all(0 <= t < VOCAB_SIZE for t in ids)
    assert TOK.tokenize(TOK.detokenize(ids)) == ids


def test_out_of_vocabulary_id_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="out of vocabulary"):
        TOK.detokenize([VOCAB_SIZE])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab Z9.\n\t é٣\u00a0-"), max_size=120), st.integers(1, 9))
def test_chunked_tokenisation_equals_the_whole_text_at_once(text: str, chunk: int) -> None:
    whole = [m.group() for m in tokenizer_module._PIECE.finditer(text)]
    tok = Tokenizer()
    expected = [tok.tokenize(p)[0] for p in whole]  # each piece on its own is one token
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer_module, "_CHUNK_CHARS", chunk)
        assert tok.tokenize(text) == expected


def test_stop_after_returns_a_prefix_longer_than_the_cap() -> None:
    text = "one two three four " * 50_000  # 200,001 tokens (the last space alone), 15 chunks
    full = TOK.tokenize(text)
    assert len(full) == 200_001
    capped = TOK.tokenize(text, stop_after=1000)
    assert 1000 < len(capped) < len(full) and capped == full[: len(capped)]
    assert TOK.tokenize("a b", stop_after=1000) == TOK.tokenize("a b")
