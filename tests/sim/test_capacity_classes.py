"""Capacity: a rate is sustained only if every judged length class meets the target too."""

from __future__ import annotations

import math

import pytest

from l4.errors import ValidationError
from l4.sim.capacity import class_attainments, failing_classes, find_capacity, sustained


def summary(overall: float, classes: dict[str, tuple[int, float]]) -> dict[str, object]:
    return {
        "slo_attainment": overall,
        "classes": {
            name: {"requests": n, "slo_attainment": share} for name, (n, share) in classes.items()
        },
    }


def probe(scale: float) -> dict[str, object]:
    """Overall attainment holds to x8; the long class (30 requests) starves past x1.5; a tiny
    class (10 requests, never judged) fails everywhere."""
    return summary(
        0.95 if scale <= 8 else 0.5,
        {
            "<2K": (500, 0.97 if scale <= 8 else 0.5),
            ">=32K": (30, 0.95 if scale <= 1.5 else 0.2),
            "8K-32K": (10, 0.0),
        },
    )


def test_a_starving_class_caps_the_capacity() -> None:
    found = find_capacity(probe, target=0.9, iterations=3)
    # Bracket [1, 2]; sqrt(2) passes, sqrt(2 sqrt 2) = 1.68 and 1.54 fail.
    assert found.rate_scale == pytest.approx(math.sqrt(2))
    assert [s for s, _ in found.probes] == pytest.approx(
        [1.0, math.sqrt(2), 2 ** (5 / 8), 2 ** (3 / 4), 2.0]
    )


def test_overall_only_is_the_old_rule() -> None:
    found = find_capacity(probe, target=0.9, iterations=3, per_class=False)
    # 1, 2, 4, 8 pass, 16 fails; 11.3, 9.5, 8.7 fail.
    assert found.rate_scale == 8.0


def test_class_judgement_details() -> None:
    s = probe(4.0)
    att = class_attainments(s)
    assert list(att) == ["<2K", "2K-8K", "8K-32K", ">=32K"]
    assert [(a.requests, a.judged) for a in att.values()] == [
        (500, True),
        (0, False),
        (10, False),
        (30, True),
    ]
    assert failing_classes(s, 0.9) == [">=32K"]
    assert not sustained(s, 0.9)
    assert sustained(s, 0.9, per_class=False)
    # Exactly 20 requests are judged; a summary without classes is judged overall only.
    assert failing_classes(summary(1.0, {"2K-8K": (20, 0.85)}), 0.9) == ["2K-8K"]
    assert failing_classes(summary(1.0, {"2K-8K": (19, 0.0)}), 0.9) == []
    assert sustained({"slo_attainment": 0.95}, 0.9)


def test_target_must_be_a_share() -> None:
    with pytest.raises(ValidationError):
        find_capacity(probe, target=1.5)
