"""The stream's event splitter: however the engine's bytes are cut into reads, the same payloads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from l4.gateway.upstream import EventSplitter

_payload = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"\n" not in b and b"\r" not in b and b.strip() == b and b != b"[DONE]"
)


def _split_all(stream: bytes, cuts: list[int]) -> tuple[list[bytes], bool]:
    splitter = EventSplitter()
    out: list[bytes] = []
    start = 0
    for end in [*sorted(set(cuts)), len(stream)]:
        out.extend(splitter.feed(stream[start:end]))
        start = end
    return out, splitter.done


@given(st.lists(_payload, max_size=12), st.lists(st.integers(0, 600), max_size=20), st.booleans())
def test_any_cut_into_reads_gives_the_same_payloads(
    payloads: list[bytes], cuts: list[int], keepalive: bool
) -> None:
    events = [b"data: " + p + b"\n\n" for p in payloads]
    if keepalive:  # a comment and a multi-field event, as SSE allows
        events.insert(len(events) // 2, b": keep-alive\n\n")
    stream = b"".join(events) + b"data: [DONE]\n\n" + b"data: after\n\n"
    out, done = _split_all(stream, [c for c in cuts if c < len(stream)])
    assert out == payloads
    assert done


def test_fields_other_than_data_are_skipped_and_an_unfinished_event_waits() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b'event: x\ndata: {"a":1}\nid: 3\n\ndata: {"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}\n") == []
    assert splitter.feed(b"\n") == [b'{"b":2}']
    assert not splitter.done
    assert splitter.feed(b"data: [DONE]\n\ndata: late\n\n") == []
    assert splitter.done
    assert splitter.feed(b"data: later\n\n") == []
