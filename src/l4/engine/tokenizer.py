"""A deterministic tokenizer shipped with L4 (no download, no model files).

Guarantees:

* The vocabulary is a pure function of the code: newline and tab, every printable ASCII
  punctuation mark and digit (bare and with a leading space), then made-up words built from
  syllables (bare and with a leading space), `VOCAB_SIZE` entries in all.
* `tokenize` splits text into pieces (an optional space plus a run of letters, one digit, one
  other character, or one whitespace character); a piece in the vocabulary maps to its id, any
  other piece to a vocabulary piece of the same class (spaced or bare word, punctuation,
  whitespace) chosen by a stable hash of its UTF-8 bytes (blake2b).
* `detokenize` is defined for every id in range, so `tokenize(detokenize(ids)) == ids` for any
  ids the tokenizer produced; text made only of vocabulary pieces round-trips exactly (generated
  text always does: it is made of " word" tokens).
* `tokenize(text, stop_after=N)` stops early once more than N tokens were produced (the prompt
  is then too long anyway), so a huge text costs no more than about N tokens' work; the ids it
  returns are then a prefix of the full tokenisation, longer than N.
* Long texts are tokenised in chunks cut only where no piece can straddle the cut (before a
  whitespace character, or between two characters that cannot share a piece), so chunking never
  changes the result.

Token counts approximate, but do not equal, those of a real model tokenizer: one token per short
word, digit or punctuation mark is close to a BPE tokenizer on English text (about 1.3 tokens per
word), and far from it on code or non-Latin scripts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from itertools import chain, islice, product

from l4.errors import ValidationError

VOCAB_SIZE = 32768
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
# Groups: 1 letters, 2 a digit, 3 any other visible character, 4 one whitespace character.
_PIECE = re.compile(r"( ?[A-Za-z]+)|( ?\d)|( ?[^\sA-Za-z\d])|(\s)")
# The same pieces without groups, for `findall` (a list of strings, built in C).
_PIECES = re.compile(r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\s")
# Where a chunk may end: before whitespace (a space only prefixes a non-space), after anything
# but a space or a letter, or between a letter and a non-letter.
_CUT = re.compile(r"\s|(?<=[^ A-Za-z]).|(?<=[A-Za-z])[^A-Za-z]", re.DOTALL)
_CHUNK_CHARS = 1 << 16
# Out-of-vocabulary pieces remembered beyond the vocabulary (natural text repeats its words).
_MEMO_EXTRA = 1 << 16
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _words(count: int) -> list[str]:
    """The first `count` made-up words of 1, 2, then 3 syllables, in a fixed order."""
    syllables = [c + v for c, v in product(_CONSONANTS, _VOWELS)]
    every = chain(
        syllables,
        ("".join(p) for p in product(syllables, repeat=2)),
        ("".join(p) for p in product(syllables, repeat=3)),
    )
    return list(islice(every, count))


def _build_vocab() -> tuple[str, ...]:
    pieces: list[str] = ["\n", "\t", " "]
    for ch in _PUNCT + "0123456789":
        pieces += [ch, " " + ch]
    head = len(pieces)
    # Half of the rest with a leading space (the usual form inside text), half bare.
    num_bare = (VOCAB_SIZE - head) // 2
    num_spaced = VOCAB_SIZE - head - num_bare
    pieces += [" " + w for w in _words(num_spaced)]
    pieces += _words(num_bare)
    return tuple(pieces)


class Tokenizer:
    """Text <-> token ids; the mapping is fixed at construction (only a cache grows)."""

    __slots__ = ("_classes", "_ids", "_memo", "_vocab", "word_ids")

    def __init__(self) -> None:
        self._vocab = _build_vocab()
        if len(self._vocab) != VOCAB_SIZE or len(set(self._vocab)) != VOCAB_SIZE:
            raise AssertionError("the tokenizer vocabulary must have VOCAB_SIZE distinct pieces")
        self._ids = {piece: i for i, piece in enumerate(self._vocab)}
        # Ids of " word" tokens: what the engine generates, so generated text reads as words.
        self.word_ids: tuple[int, ...] = tuple(
            i for i, p in enumerate(self._vocab) if len(p) > 2 and p[0] == " " and p[1:].isalpha()
        )
        # Unknown pieces hash into known pieces of the same class, so that the class sequence,
        # and with it the split, survives detokenize -> tokenize.
        classes: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(self._vocab):
            m = _PIECE.fullmatch(p)
            assert m is not None and m.lastindex is not None
            if p != " ":  # a lone space would merge with a following piece
                classes.setdefault((m.lastindex, p[0] == " "), []).append(i)
        self._classes = {k: tuple(v) for k, v in classes.items()}
        # Piece -> id: the vocabulary plus the out-of-vocabulary pieces seen so far (bounded).
        # Only a cache: any piece maps to the same id whether it is remembered or not.
        self._memo = dict(self._ids)

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def tokenize(self, text: str, *, stop_after: int | None = None) -> list[int]:
        """Token ids of `text`; with `stop_after`, possibly only a prefix longer than it."""
        out: list[int] = []
        start, end = 0, len(text)
        while start < end:
            cut = end
            if end - start > _CHUNK_CHARS:
                m = _CUT.search(text, start + _CHUNK_CHARS)
                cut = m.start() if m is not None else end
            out += self._tokenize_chunk(text[start:cut])
            start = cut
            if stop_after is not None and len(out) > stop_after:
                break
        return out

    def _tokenize_chunk(self, text: str) -> list[int]:
        pieces = _PIECES.findall(text)
        ids: list[int | None] = list(map(self._memo.get, pieces))
        i = -1
        while True:  # out-of-vocabulary pieces not remembered yet (list.index scans in C)
            try:
                i = ids.index(None, i + 1)
            except ValueError:
                return ids  # type: ignore[return-value]  # no None is left
            ids[i] = self._learn(pieces[i])

    def _learn(self, piece: str) -> int:
        memo = self._memo
        tid = memo.get(piece)
        if tid is None:
            tid = self._hash_piece(piece)
            if len(memo) < VOCAB_SIZE + _MEMO_EXTRA:
                memo[piece] = tid
        return tid

    def _hash_piece(self, piece: str) -> int:
        """A vocabulary piece of the same class as `piece`, chosen by a stable hash of it."""
        m = _PIECE.fullmatch(piece)
        assert m is not None and m.lastindex is not None
        group = m.lastindex
        spaced = piece[0] == " " and group != 4
        same = self._classes[(group, spaced)]
        digest = hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest()
        return same[int.from_bytes(digest, "little") % len(same)]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        self.check_ids(token_ids)
        vocab = self._vocab
        return "".join(vocab[t] for t in token_ids)

    def piece(self, token_id: int) -> str:
        return self._vocab[token_id]

    def check_ids(self, token_ids: Sequence[int]) -> None:
        for t in token_ids:
            if not 0 <= t < VOCAB_SIZE:
                raise ValidationError(f"token id {t} is out of vocabulary (0..{VOCAB_SIZE - 1})")
