"""The exponential candidate-boundary grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from l4.core.grid import LengthGrid, exponential_grid
from l4.errors import ValidationError


def test_default_grid_for_128k_has_four_points_per_octave() -> None:
    grid = exponential_grid(131072)
    edges = grid.edges_tokens
    assert edges[:6] == (0, 64, 76, 91, 108, 128)
    assert edges[-1] < 131072 and 65536 in edges and 16384 in edges
    assert grid.num_buckets == 1 + 4 * 11  # 64 .. 2^17 is 11 octaves


@given(
    max_ctx=st.integers(min_value=65, max_value=1 << 20),
    m=st.integers(min_value=1, max_value=8),
    lo=st.integers(min_value=1, max_value=64),
)
def test_grid_is_strictly_increasing_and_below_context(max_ctx: int, m: int, lo: int) -> None:
    grid = exponential_grid(max_ctx, substeps_per_octave=m, min_tokens=lo)
    e = np.array(grid.edges_tokens)
    assert e[0] == 0 and e[1] == lo
    assert np.all(np.diff(e) > 0)
    assert e[-1] < max_ctx


def test_bucket_of_maps_every_length_to_its_bucket() -> None:
    grid = exponential_grid(1024, substeps_per_octave=1, min_tokens=64)
    assert grid.edges_tokens == (0, 64, 128, 256, 512)
    lengths = [0, 63, 64, 127, 128, 511, 512, 1023, 5000]
    assert grid.bucket_of(lengths).tolist() == [0, 0, 1, 1, 2, 3, 4, 4, 4]
    assert grid.boundary_tokens(2) == 128
    assert grid.boundary_tokens(grid.num_buckets) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"substeps_per_octave": 0},
        {"min_tokens": 0},
        {"min_tokens": 4096},
    ],
)
def test_bad_grid_options_raise(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        exponential_grid(2048, **kwargs)


def test_grid_validates_edges() -> None:
    with pytest.raises(ValidationError):
        LengthGrid(edges_tokens=(0, 10, 10), max_context_tokens=100)
    with pytest.raises(ValidationError):
        LengthGrid(edges_tokens=(1, 10), max_context_tokens=100)
    with pytest.raises(ValidationError):
        exponential_grid(1024).bucket_of([-1])
