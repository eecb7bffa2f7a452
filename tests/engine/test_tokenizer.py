from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
