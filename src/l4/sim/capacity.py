"""Capacity: the largest rate multiplier whose SLO attainment stays at or above a target.

Bracketing by doubling/halving from 1.0, then geometric bisection. Pure over `probe`, which runs
one simulation at a rate multiplier and returns its summary; every probe is kept so the caller can
plot goodput against rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from l4.errors import ValidationError

Probe = Callable[[float], Mapping[str, object]]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityResult:
    rate_scale: float | None  # None: even the lowest probed rate missed the target
    summary: Mapping[str, object] | None
    probes: tuple[tuple[float, Mapping[str, object]], ...]


def attainment(summary: Mapping[str, object]) -> float:
    value = summary.get("slo_attainment")
    return float(value) if isinstance(value, int | float) else 0.0


def find_capacity(
    probe: Probe,
    *,
    target: float,
    iterations: int = 6,
    max_factor: float = 64.0,
) -> CapacityResult:
    if not 0.0 < target <= 1.0:
        raise ValidationError(f"--goodput-target must be in (0, 1], got {target}")
    probes: dict[float, Mapping[str, object]] = {}

    def ok(scale: float) -> bool:
        if scale not in probes:
            probes[scale] = probe(scale)
        return attainment(probes[scale]) >= target

    good: float | None = None
    bad: float | None = None
    scale = 1.0
    if ok(scale):
        good = scale
        while bad is None and scale < max_factor:
            scale *= 2
            if ok(scale):
                good = scale
            else:
                bad = scale
    else:
        bad = scale
        while good is None and scale > 1 / max_factor:
            scale /= 2
            if ok(scale):
                good = scale
            else:
                bad = scale
    if good is not None and bad is not None:
        for _ in range(iterations):
            mid = math.sqrt(good * bad)
            if ok(mid):
                good = mid
            else:
                bad = mid
    ordered = tuple(sorted(probes.items()))
    return CapacityResult(
        rate_scale=good, summary=probes[good] if good is not None else None, probes=ordered
    )
