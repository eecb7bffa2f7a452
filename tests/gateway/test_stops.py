"""Stop strings over stitched text: what is released equals vLLM's cut, however text is split."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from l4.gateway.stops import StopHit, StopStrings


def run(pieces: list[str], stops: tuple[str, ...], *, min_tokens: int = 0, include: bool = False
        ) -> tuple[str, str | None]:  # fmt: skip
    s = StopStrings(stops, min_tokens=min_tokens, include=include)
    out, hit = [], None
    for n, piece in enumerate(pieces, start=1):
        got = s.feed(piece, n)
        if isinstance(got, StopHit):
            out.append(got.text)
            hit = got.stop
            break
        out.append(got)
    else:
        out.append(s.flush())
    return "".join(out), hit


def reference(pieces: list[str], stops: tuple[str, ...], include: bool) -> tuple[str, str | None]:
    """As vLLM checks stop strings: after each token, over all the text so far; the earliest
    match (the first listed at a tie) ends the request. Which one matches first can depend on
    where tokens end (stops "bc" and "abcd" on "abc" + "d" stop at "bc"), in vLLM as here."""
    text = ""
    for piece in pieces:
        text += piece
        best: tuple[int, str] | None = None
        for s in stops:
            i = text.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            at, stop = best
            return text[: at + len(stop) if include else at], stop
    return text, None


def test_a_stop_string_split_across_pieces_is_found_and_never_streamed() -> None:
    s = StopStrings(("END",), min_tokens=0, include=False)
    assert s.feed("hello E", 1) == "hello"  # "E" and one more held back (len("END") - 1 = 2)
    got = s.feed("ND tail", 2)
    assert got == StopHit(text=" ", stop="END")
    assert s.feed("more", 3) == "" and s.flush() == ""


def test_include_stop_str_in_output() -> None:
    assert run(["ab", "cST", "OPd"], ("STOP",), include=True) == ("abcSTOP", "STOP")


def test_stop_strings_wait_for_min_tokens_as_vllm_does() -> None:
    # The stop string arrives with token 1, but min_tokens is 3: only a later one counts.
    assert run(["x!", "y", "z!w"], ("!",), min_tokens=3) == ("x!yz", "!")


def test_no_stops_releases_everything_at_once() -> None:
    s = StopStrings((), min_tokens=0, include=False)
    assert s.feed("abc", 1) == "abc" and s.flush() == ""


@given(
    text=st.text(alphabet="abcXY", max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=10),
    stops=st.lists(st.text(alphabet="abXY", min_size=1, max_size=4), min_size=1, max_size=3),
    include=st.booleans(),
)
def test_any_split_cuts_where_checking_all_text_after_each_piece_would(
    text: str, cuts: list[int], stops: list[str], include: bool
) -> None:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(points)] or [""]
    assert run(pieces, tuple(stops), include=include) == reference(pieces, tuple(stops), include)
