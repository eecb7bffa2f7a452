"""Capacity: the largest rate multiplier whose SLO attainment stays at or above a target.

A rate is *sustained* when SLO attainment meets the target overall **and in every length class**
(`l4.metrics.LENGTH_CLASSES`, by request total tokens) that has at least
`l4.metrics.MIN_CLASS_REQUESTS` requests (EVALUATION.md): otherwise a policy could pass while a
10% class of long documents starves. ``per_class=False`` judges the overall attainment only.

Bracketing by doubling/halving from 1.0, then geometric bisection. Pure over `probe`, which runs
one simulation at a rate multiplier and returns its summary; every probe is kept so the caller can
plot goodput against rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from l4.errors import ValidationError
from l4.metrics import LENGTH_CLASSES, MIN_CLASS_REQUESTS

Probe = Callable[[float], Mapping[str, object]]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityResult:
    rate_scale: float | None  # None: even the lowest probed rate missed the target
    summary: Mapping[str, object] | None
    probes: tuple[tuple[float, Mapping[str, object]], ...]


def attainment(summary: Mapping[str, object]) -> float:
    value = summary.get("slo_attainment")
    return float(value) if isinstance(value, int | float) else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassAttainment:
    requests: int
    slo_attainment: float | None
    judged: bool  # enough requests to count (MIN_CLASS_REQUESTS)


def class_attainments(summary: Mapping[str, object]) -> dict[str, ClassAttainment]:
    """Per-class attainment of a run summary (``l4.metrics.summarize``), in class order."""
    classes = summary.get("classes")
    out: dict[str, ClassAttainment] = {}
    for name, _, _ in LENGTH_CLASSES:
        entry = classes.get(name) if isinstance(classes, Mapping) else None
        entry = entry if isinstance(entry, Mapping) else {}
        n = entry.get("requests")
        value = entry.get("slo_attainment")
        requests = int(n) if isinstance(n, int | float) else 0
        out[name] = ClassAttainment(
            requests=requests,
            slo_attainment=float(value) if isinstance(value, int | float) else None,
            judged=requests >= MIN_CLASS_REQUESTS,
        )
    return out


def failing_classes(summary: Mapping[str, object], target: float) -> list[str]:
    """Judged classes whose attainment is below ``target``."""
    return [
        name
        for name, c in class_attainments(summary).items()
        if c.judged and (c.slo_attainment or 0.0) < target
    ]


def sustained(summary: Mapping[str, object], target: float, *, per_class: bool = True) -> bool:
    """The run meets ``target`` overall and, with ``per_class``, in every judged class."""
    if attainment(summary) < target:
        return False
    return not (per_class and failing_classes(summary, target))


def find_capacity(
    probe: Probe,
    *,
    target: float,
    iterations: int = 6,
    max_factor: float = 64.0,
    per_class: bool = True,
) -> CapacityResult:
    if not 0.0 < target <= 1.0:
        raise ValidationError(f"--goodput-target must be in (0, 1], got {target}")
    probes: dict[float, Mapping[str, object]] = {}

    def ok(scale: float) -> bool:
        if scale not in probes:
            probes[scale] = probe(scale)
        return sustained(probes[scale], target, per_class=per_class)

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
