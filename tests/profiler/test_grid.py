"""The profiler's grid and paged layouts (pure code, no torch)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4.costmodel import load_profile
from l4.costmodel.alpha_fit import SkewShape
from l4.errors import ValidationError
from l4.profiler.grid import (
    FULL_GRID,
    QUICK_GRID,
    BatchKind,
    GridSpec,
    PrefillSpec,
    batch_layout,
    grid_points,
    long_positions,
    page_table,
    pages_for,
)


@settings(max_examples=80, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 5000), min_size=1, max_size=40),
    page=st.sampled_from([16, 64, 256]),
    pool=st.integers(1, 400),
    seed=st.integers(0, 2**32 - 1),
)
def test_page_table_places_every_page_and_shares_none_while_the_pool_lasts(
    lengths: list[int], page: int, pool: int, seed: int
) -> None:
    table = page_table(lengths, page, pool, seed)
    assert table.dtype == np.int32 and table.shape[0] == len(lengths)
    used = [table[i, : pages_for(t, page)] for i, t in enumerate(lengths)]
    flat = np.concatenate(used)
    assert ((flat >= 0) & (flat < pool)).all()
    if len(flat) <= pool:
        assert len(set(flat.tolist())) == len(flat)
    else:
        # reuse is spread over the whole pool, each page at most once more than any other
        counts = np.bincount(flat, minlength=pool)
        assert counts.max() - counts.min() <= 1
    assert (page_table(lengths, page, pool, seed) == table).all()


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 300),
    nb_share=st.floats(0.0, 1.0),
    short=st.integers(1, 5000),
    extra=st.integers(0, 100_000),
    chunk=st.integers(0, 4096),
)
def test_the_three_batches_of_a_point(
    n: int, nb_share: float, short: int, extra: int, chunk: int
) -> None:
    nb = max(1, round(nb_share * n))
    shape = SkewShape(
        num_decodes=n,
        num_long=nb,
        short_tokens=short,
        long_tokens=short + extra,
        prefill_chunk_tokens=chunk,
    )
    skew, mean, top = (batch_layout(shape, k) for k in BatchKind)
    assert len(set(long_positions(n, nb))) == nb
    assert sorted(skew.decode_kv_tokens).count(shape.long_tokens) >= nb
    assert sum(skew.decode_kv_tokens) == nb * shape.long_tokens + (n - nb) * short
    # the mean batch has the mixed batch's tokens, up to rounding down; max is the ceiling
    assert 0 <= sum(skew.decode_kv_tokens) - sum(mean.decode_kv_tokens) < n
    assert top.decode_kv_tokens == (shape.long_tokens,) * n
    for layout in (skew, mean, top):
        assert layout.query_tokens[:n] == (1,) * n
        assert layout.has_prefill == (chunk > 0)
        if chunk:
            assert layout.query_tokens[-1] == chunk and layout.kv_tokens[-1] == chunk


def test_full_grid_respects_the_profiles_kv_capacity() -> None:
    profile = load_profile("h100-llama-3.1-8b")
    spec = replace(FULL_GRID, max_batch_tokens=profile.kv_capacity_tokens)
    points = grid_points(spec)
    assert points and len(points) == len(set(points))
    assert all(
        batch_layout(p, BatchKind.SKEW).total_kv_tokens <= profile.kv_capacity_tokens
        for p in points
    )
    assert {p.num_decodes for p in points} == set(FULL_GRID.num_decodes)
    assert {p.regime for p in points} == {"pure", "mixed"}
    assert max(p.long_tokens for p in points) == 131072
    # the worst case for alpha, one 128K request among short ones, survives at every n
    for n in FULL_GRID.num_decodes:
        assert any(
            p.num_decodes == n and p.num_long == 1 and p.long_tokens == 131072 for p in points
        )
    assert len(points) < len(grid_points(FULL_GRID))


def test_quick_grid_is_small() -> None:
    points = grid_points(QUICK_GRID)
    assert 0 < len(points) <= 30
    assert max(p.long_tokens for p in points) <= 256


def test_long_counts_from_counts_and_shares() -> None:
    spec = GridSpec(
        num_decodes=(2, 16),
        short_tokens=(8,),
        long_tokens=(64,),
        num_long=(1, 3),
        long_shares=(0.5, 0.99),
    )
    by_n: dict[int, set[int]] = {}
    for p in grid_points(spec):
        by_n.setdefault(p.num_decodes, set()).add(p.num_long)
    assert by_n == {2: {1}, 16: {1, 3, 8, 15}}


@pytest.mark.parametrize(
    "bad",
    [
        {"num_decodes": ()},
        {"long_shares": (1.0,)},
        {"num_long": (), "long_shares": ()},
        {"prefills": (PrefillSpec(chunk_tokens=0, prior_tokens=5),)},
        {"max_batch_tokens": 0},
    ],
)
def test_invalid_grids_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        replace(QUICK_GRID, **bad)
