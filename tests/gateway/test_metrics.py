"""The gateway's list-backed histogram renders exactly as prometheus_client's own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from l4.gateway.metrics import FastHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def lines(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=40))
def test_same_text_as_the_client_librarys_histogram(values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("x_seconds", "doc", BUCKETS, ours)
    slow = Histogram("x_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for v in values:
        fast.observe(v)
        slow.observe(v)
    assert lines(ours) == lines(theirs)


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    reg = CollectorRegistry()
    h = FastHistogram("y_seconds", "doc", (1.0, 2.0), reg)
    h.observe(1.0)
    assert 'y_seconds_bucket{le="1.0"} 1.0' in lines(reg)
