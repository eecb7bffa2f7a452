"""The stage table keeps boundaries ordered and every instance in exactly one non-empty stage."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from l4.agents.stages import StageTable, reassign, resize_stages
from l4.core.planner import Plan, PlannedStage
from l4.errors import ValidationError


def _table() -> StageTable:
    return StageTable(boundaries_tokens=(100, 1000, 5000), stage_of_instance=(0, 1, 1, 2, 3, 3))


@given(st.lists(st.tuples(st.integers(-1, 5), st.integers(-10, 10_000)), max_size=40))
def test_any_sequence_of_moves_keeps_boundaries_strictly_ordered(
    moves: list[tuple[int, int]],
) -> None:
    table = _table()
    for index, tokens in moves:
        moved = table.with_move(index, tokens)
        if moved is None:
            continue
        assert moved.boundaries_tokens[index - 1] == tokens
        table = moved
        b = table.boundaries_tokens
        assert all(x < y for x, y in itertools.pairwise(b)) and b[0] > 0


def test_a_move_past_a_neighbour_is_refused() -> None:
    table = _table()
    assert table.with_move(2, 100) is None
    assert table.with_move(2, 5000) is None
    assert table.with_move(1, 0) is None
    assert table.with_move(4, 9000) is None
    assert table.with_move(2, 4999) is not None


def test_stage_of_and_bounds_agree() -> None:
    table = _table()
    for length in (0, 99, 100, 999, 1000, 4999, 5000, 10**6):
        s = table.stage_of(length)
        lo, hi = table.bounds(s)
        assert lo <= length and (hi is None or length < hi)


def test_invalid_tables_are_rejected() -> None:
    with pytest.raises(ValidationError):
        StageTable(boundaries_tokens=(100, 100), stage_of_instance=(0, 1, 2))
    with pytest.raises(ValidationError):
        StageTable(boundaries_tokens=(100,), stage_of_instance=(0, 0))  # stage 1 empty


@given(st.lists(st.integers(1, 4), min_size=1, max_size=5), st.data())
def test_reassign_respects_sizes_and_keeps_instances_in_length_order(
    old_sizes: list[int], data: st.DataObject
) -> None:
    stage_of = tuple(s for s, n in enumerate(old_sizes) for _ in range(n))
    table = StageTable(
        boundaries_tokens=tuple(100 * (k + 1) for k in range(len(old_sizes) - 1)),
        stage_of_instance=stage_of,
    )
    total = len(stage_of)
    parts = data.draw(st.integers(1, total))
    cuts = (
        sorted(
            data.draw(st.sets(st.integers(1, total - 1), min_size=parts - 1, max_size=parts - 1))
        )
        if parts > 1
        else []
    )
    bounds = [0, *cuts, total]
    counts = [b - a for a, b in itertools.pairwise(bounds)]
    new = reassign(table, counts)
    assert [new.count(s) for s in range(len(counts))] == counts
    # An instance that served shorter lengths never lands in a later stage than a longer one.
    for i in range(total):
        for j in range(total):
            if stage_of[i] < stage_of[j]:
                assert new[i] <= new[j]


def test_bounds_of_every_stage() -> None:
    table = StageTable(boundaries_tokens=(100, 200), stage_of_instance=(0, 1, 2))
    assert [table.bounds(s) for s in range(3)] == [(0, 100), (100, 200), (200, None)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boundaries_tokens": (0,), "stage_of_instance": (0, 1)}, "must be positive"),
        ({"boundaries_tokens": (5, 5), "stage_of_instance": (0, 1, 2)}, "and increasing"),
        (
            {"boundaries_tokens": (5,), "stage_of_instance": (0, 2)},
            "^an instance is assigned to a stage that does not exist$",
        ),
        (
            {"boundaries_tokens": (5,), "stage_of_instance": (0, 0)},
            "^every stage needs at least one serving instance$",
        ),
    ],
)
def test_bad_tables_are_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StageTable(**kwargs)  # type: ignore[arg-type]
    StageTable(boundaries_tokens=(1,), stage_of_instance=(0, 1))  # 1 token is a boundary


def test_from_plan_keeps_the_version() -> None:
    stages = (
        PlannedStage(lo_tokens=0, hi_tokens=64, num_instances=2, ttft_s=0, tpot_s=0, cost=0),
        PlannedStage(lo_tokens=64, hi_tokens=None, num_instances=1, ttft_s=0, tpot_s=0, cost=0),
    )
    table = StageTable.from_plan(Plan(stages=stages, cost=0.0, planning_time_s=0.0), version=4)
    assert table == StageTable(boundaries_tokens=(64,), stage_of_instance=(0, 0, 1), version=4)


def test_an_instance_out_of_service_keeps_its_stage_capped_at_the_last() -> None:
    # Three stages become two; instance 2 (out, in stage 2) is capped at the new last stage (1).
    current = StageTable(
        boundaries_tokens=(10, 20), stage_of_instance=(0, 1, 2, 2), out=frozenset({2})
    )
    assert reassign(current, [2, 1]) == (0, 0, 1, 1)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=200),
)
def test_resized_stages_keep_every_stage_and_their_shares(sizes: list[int], total: int) -> None:
    assume(len(sizes) <= total)
    out = resize_stages(sizes, total)
    assert sum(out) == total and len(out) == len(sizes) and min(out) >= 1
    quota = [total * n / sum(sizes) for n in sizes]
    if min(quota) >= 1:  # no stage raised to its floor of one: each within one of its quota
        assert all(abs(o - q) < 1 for o, q in zip(out, quota, strict=True))
    if total == sum(sizes):
        assert out == tuple(sizes)


def test_resizing_changes_only_the_stage_that_lost_an_instance() -> None:
    assert resize_stages([1, 4, 1], 5) == (1, 3, 1)
    assert resize_stages([2, 2], 3) == (2, 1)  # ties to the earlier stage
    assert resize_stages([1, 3], 7) == (2, 5)
    assert resize_stages([1, 1, 10], 3) == (1, 1, 1)
    with pytest.raises(ValidationError):
        resize_stages([1, 1], 1)
    with pytest.raises(ValidationError):
        resize_stages([0, 2], 2)
