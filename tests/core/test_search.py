"""Partition search: the exact split, the block search for large fleets and its gap bound.

Every expected value comes from brute force over all partitions and splits (``brute_force``) or
over all compositions of the instances, never from the code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4.core.search import (
    allocate,
    block_search,
    block_size,
    brute_force,
    idle_best,
    merge_segments,
)

finite_or_inf = st.one_of(st.floats(0, 100, allow_nan=False), st.just(np.inf))


@st.composite
def raw_tables(draw: st.DrawFn) -> np.ndarray:
    """Raw stage costs (K+1, K+1, E), not monotone in n: the search applies the idle rule."""
    k1 = draw(st.integers(2, 5))
    e = draw(st.integers(2, 9))
    values = draw(st.lists(finite_or_inf, min_size=k1 * k1 * e, max_size=k1 * k1 * e))
    table = np.array(values, dtype=np.float64).reshape(k1, k1, e)
    table[np.tril_indices(k1)] = np.inf
    return table


def _idle(table: np.ndarray) -> np.ndarray:
    """The idle rule by definition: the least cost over n' <= n."""
    return np.minimum.accumulate(table, axis=-1)


def _oracle(table: np.ndarray):  # type: ignore[no-untyped-def]
    def oracle(lo: np.ndarray, hi: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return table[lo[:, None], hi[:, None], counts[None, :] - 1]

    return oracle


def test_idle_best_is_the_running_minimum_and_prefers_more_instances_on_ties() -> None:
    cost = np.array([[np.inf, 5.0, 7.0, 5.0, 4.0], [3.0, 3.0, 2.0, 9.0, 2.0]])
    best = idle_best(cost)
    assert best.tolist() == [[0, 1, 1, 3, 4], [0, 1, 2, 2, 4]]
    assert np.array_equal(np.take_along_axis(cost, best, axis=1), _idle(cost))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 4).flatmap(
        lambda s: st.integers(s, 9).flatmap(
            lambda e: st.lists(finite_or_inf, min_size=s * e, max_size=s * e).map(
                lambda v: np.array(v, dtype=np.float64).reshape(s, e)
            )
        )
    )
)
def test_allocate_equals_every_composition(rows: np.ndarray) -> None:
    num_stages, e = rows.shape
    best = min(
        (
            sum(rows[s, n - 1] for s, n in enumerate(split))
            for cut in itertools.combinations(range(1, e), num_stages - 1)
            for split in [np.diff((0, *cut, e))]
        ),
        default=np.inf,
    )
    total, counts = allocate(rows)
    if np.isinf(best):
        assert np.isinf(total) and counts == []
        return
    assert total == pytest.approx(best)
    assert sum(counts) == e and all(n >= 1 for n in counts)
    assert sum(rows[s, n - 1] for s, n in enumerate(counts)) == pytest.approx(total)


def test_allocate_hand_example() -> None:
    # 5 instances over two stages: (2, 3) costs 4 + 1 = 5, every other split more.
    rows = np.array([[9.0, 4.0, 3.5, 3.0, 3.0], [8.0, 6.0, 1.0, 1.0, 1.0]])
    assert allocate(rows) == (5.0, [2, 3])


def test_block_size() -> None:
    assert [block_size(e, 64) for e in (1, 64, 65, 128, 129, 4096)] == [1, 1, 2, 2, 3, 64]


@settings(max_examples=150, deadline=None)
@given(table=raw_tables())
def test_block_search_is_exact_when_the_blocks_are_single_instances(table: np.ndarray) -> None:
    e = table.shape[2]
    total, _ = block_search(_oracle(table), table.shape[0], e, max_units=e)
    best, _ = brute_force(_idle(table))
    assert total == pytest.approx(best) or (np.isinf(total) and np.isinf(best))


@settings(max_examples=300, deadline=None)
@given(table=raw_tables(), max_units=st.integers(1, 4))
def test_block_search_gap_stays_within_its_bound(table: np.ndarray, max_units: int) -> None:
    """Never below the optimum; above it by at most the cost of rounding the optimum's stages
    down to whole blocks (when each has at least one block), as the module docstring states."""
    k1, _, e = table.shape
    q = block_size(e, max_units)
    total, segs = block_search(_oracle(table), k1, e, max_units=max_units)
    idle = _idle(table)
    best, best_segs = brute_force(idle)
    if np.isfinite(total):
        assert total >= best - 1e-9
        assert sum(n for *_, n in segs) == e and all(n >= 1 for *_, n in segs)
        assert segs[0][0] == 0 and segs[-1][1] == k1 - 1
        assert all(a[1] == b[0] for a, b in itertools.pairwise(segs))
        assert total == pytest.approx(sum(idle[i, j, n - 1] for i, j, n in segs))
    if np.isfinite(best) and all(n >= q for *_, n in best_segs):
        # The lattice the blocks see: the idle rule over block counts only.
        blocks = _idle(table[:, :, q - 1 :: q][:, :, : e // q])
        bound = sum(blocks[i, j, n // q - 1] for i, j, n in best_segs)
        assert total <= bound + 1e-9


def test_merge_segments_asks_in_batches_and_joins_only_without_loss() -> None:
    costs = {(0, 1, 1): 1.0, (1, 2, 1): 1.0, (0, 2, 2): 2.0, (2, 3, 1): 1.0, (0, 3, 3): 5.0}
    costs[(1, 3, 2)] = 4.0
    calls: list[int] = []

    def cost_of(segs: list[tuple[int, int, int]]) -> np.ndarray:
        calls.append(len(segs))
        return np.array([costs[s] for s in segs])

    assert merge_segments(cost_of, [(0, 1, 1), (1, 2, 1), (2, 3, 1)]) == [(0, 2, 2), (2, 3, 1)]
    assert calls == [3, 2, 2, 1]
