"""The decode batch a stage runs at: the least ``B`` with ``B = k_r T(B + 1)`` (L4.md section 4).

By Little's law a stage's instances hold ``B = r TPOT / n`` decodes beside the tagged request, and
``TPOT = T(B + 1) / (1 - phi)``; with ``k_r = r / (n (1 - phi))`` the batch is a root of
``F(B) = k_r T(B + 1) - B``, with ``F(0) > 0``. The least root is the operating point: the batch
grows from empty and stops at the first balance. ``decode_batch`` returns it for every element of
flat arrays, or ``ok = False`` where none lies below the sequence and KV limits (the stage is
overloaded). It is pure: the step time ``T`` comes from the caller (``StageModel.decode_step_s``).

Newton from ``B = 0`` rises monotonically to the least root when ``T`` is convex. A measured alpha
table need not be monotone in the batch (Hopper's rises from 16 to 32 decodes, then falls), so
``T`` can have a hump that ``F`` climbs over to a root beyond it, where Newton stalls (``F' >= 0``)
or cycles; those elements go to ``least_root``: a scan from 0 for the first sign change, then
rounds of sections of that bracket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from l4.instance.config import InstanceConfig

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_NEWTON_STEPS = 40
_NEWTON_TOL = 1e-7  # relative change of the decode batch
_HUMP_SCAN_STEPS = 48  # batches tried above a hump of T, quadratically spaced to the limit
_HUMP_SECTIONS = 16  # pieces a bracket is cut into per round
_HUMP_ROUNDS = 10  # 16^-10: the bracket to 1e-12 of its width
# Batches x elements least_root evaluates at once (its temporaries: a few MB).
_SCAN_ELEMENTS = 1 << 15


class StepTime(Protocol):
    def decode_step_s(
        self, batch: FloatArray, l_mean: FloatArray, l_max: FloatArray, prefill_frac: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Step time of ``batch`` decodes (real-valued, >= 1) and its slope in ``batch``."""
        ...


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one instance can hold: a batch past either limit is no operating point."""

    max_num_seqs: float
    kv_capacity_tokens: float

    @classmethod
    def of(cls, instance: InstanceConfig) -> BatchLimits:
        return cls(float(instance.max_num_seqs), float(instance.kv_capacity_tokens))


def decode_batch(
    model: StepTime,
    k_r: FloatArray,
    l_mean: FloatArray,
    l_max_q: FloatArray,
    quantiles: FloatArray,
    prefill_rate: FloatArray,
    ok: BoolArray,
    limits: BatchLimits,
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Decode batch B with ``B = k_r * T(B + 1)`` (flat arrays): (B, prefill fraction, ok).

    The batch's longest context is the expected maximum of B + 1 draws (``batch_max`` of
    the tabulated quantiles ``l_max_q``, shape (Q, elements)); like alpha, it is held fixed
    within a Newton step.

    Newton steps from B = 0 rise monotonically to the least root when T is convex; ``ok``
    turns False when B passes the sequence or KV limit, or when no root is left above the
    batch where F' >= 0 stopped Newton. A measured alpha table need not be monotone in the
    batch (Hopper's rises from 16 to 32 decodes, then falls), so T can have a hump that F
    climbs over to a root beyond it; there ``least_root`` finds it. Only elements still moving
    are iterated (alpha's and the prefill fraction's feedback make a few converge linearly, not
    quadratically).
    """
    batch = np.zeros_like(k_r)
    frac = np.zeros_like(k_r)
    ok = ok.copy()
    seq_cap, kv_cap = limits.max_num_seqs, limits.kv_capacity_tokens
    act = np.flatnonzero(ok)
    stalled = np.zeros_like(ok)
    for _ in range(_NEWTON_STEPS):
        if act.size == 0:
            break
        b, kr, lm = batch[act], k_r[act], l_mean[act]
        lx = batch_max(l_max_q, quantiles, b, act)
        t, slope = model.decode_step_s(b + 1.0, lm, lx, frac[act])
        fp = kr * slope - 1.0
        good = fp < 0
        stalled[act] = ~good
        step = np.where(good, (kr * t - b) / np.where(good, fp, -1.0), 0.0)
        b = np.maximum(b - step, 0.0)
        # Iterates rise towards the root: past a hard limit the stage cannot hold it.
        good &= (b < seq_cap) & (b * lm < kv_cap)
        batch[act] = b
        frac[act] = np.minimum(prefill_rate[act] * t, 1.0)
        ok[act] = good
        act = act[good & (np.abs(step) > _NEWTON_TOL * (1.0 + b))]
    # Stalled on a hump (F' >= 0) or still cycling across one (Newton on a non-convex F).
    stalled[act] = True
    ok[act] = False
    hump = np.flatnonzero(stalled & ~ok)
    chunk = _SCAN_ELEMENTS // _HUMP_SECTIONS
    for part in (hump[i : i + chunk] for i in range(0, hump.size, chunk)):
        b, f, found = least_root(
            model, k_r[part], l_mean[part], l_max_q, quantiles, prefill_rate[part], part, limits
        )
        batch[part], frac[part], ok[part] = b, f, found
    return batch, frac, ok


def least_root(
    model: StepTime,
    k_r: FloatArray,
    l_mean: FloatArray,
    l_max_q: FloatArray,
    quantiles: FloatArray,
    prefill_rate: FloatArray,
    cols: npt.NDArray[np.intp],
    limits: BatchLimits,
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """The least root of ``F(B) = k_r T(B + 1) - B`` (``F(0) > 0``) below the sequence and
    KV limits: (B, prefill fraction, found). A scan from 0 finds the first sign change (Newton
    may have stalled on a hump or overshot the root), then rounds of sections of that bracket
    narrow it to the root; the prefill fraction is iterated with T at each B.

    The batches a step tries are evaluated together, as rows of one array: refinement calls
    this on a few dozen elements at a time, where a call per batch cost more than the
    arithmetic (callers keep ``elements x _HUMP_SECTIONS`` within ``_SCAN_ELEMENTS``)."""
    m = k_r.size

    def excess(b: FloatArray) -> tuple[FloatArray, FloatArray]:
        rows = b.size // max(m, 1)
        flat = b.ravel()
        kr, lm, rate = (np.tile(x, rows) for x in (k_r, l_mean, prefill_rate))
        lx = batch_max(l_max_q, quantiles, flat, np.tile(cols, rows))
        frac = np.zeros_like(flat)
        for _ in range(3):
            t, _ = model.decode_step_s(flat + 1.0, lm, lx, frac)
            frac = np.minimum(rate * t, 1.0)
        return (kr * t - flat).reshape(b.shape), frac.reshape(b.shape)

    limit = np.minimum(limits.max_num_seqs, limits.kv_capacity_tokens / np.maximum(l_mean, 1.0))
    lo, hi = np.zeros_like(k_r), np.full_like(k_r, np.nan)
    steps = np.arange(1, _HUMP_SCAN_STEPS + 1, dtype=np.float64)
    per_block = max(1, min(_HUMP_SCAN_STEPS, _SCAN_ELEMENTS // max(m, 1)))
    for first in range(0, _HUMP_SCAN_STEPS, per_block):
        # Batches quadratically spaced up to the limit: finer at small batches.
        fractions = (steps[first : first + per_block] / _HUMP_SCAN_STEPS) ** 2
        points = fractions[:, None] * limit[None, :]  # (rows, elements)
        open_ = np.isnan(hi)
        crossed, before, after = _first_crossing(points, excess(points)[0], lo)
        crossed &= open_
        lo = np.where(crossed, before, np.where(open_, points[-1], lo))
        hi = np.where(crossed, after, hi)
        if not np.isnan(hi).any():
            break
    found = ~np.isnan(hi)
    hi = np.where(found, hi, lo)
    # Then the bracket is cut into _HUMP_SECTIONS at once, round after round, keeping the
    # first piece where F changes sign (bisection would keep any one).
    inner = (np.arange(1, _HUMP_SECTIONS, dtype=np.float64) / _HUMP_SECTIONS)[:, None]
    for _ in range(_HUMP_ROUNDS):
        points = lo[None, :] + inner * (hi - lo)[None, :]
        crossed, before, after = _first_crossing(points, excess(points)[0], lo)
        lo = np.where(found, np.where(crossed, before, points[-1]), lo)
        hi = np.where(found & crossed, after, hi)
    root = np.where(found, 0.5 * (lo + hi), 0.0)
    return root, excess(root)[1], found


def _first_crossing(
    points: FloatArray, f: FloatArray, lo: FloatArray
) -> tuple[BoolArray, FloatArray, FloatArray]:
    """Along each column of ``points`` (rising batches), the first where F <= 0 (or NaN):
    (whether any, the point before it or ``lo`` when it is the first row, that point)."""
    below = ~(f > 0)
    row = np.argmax(below, axis=0)
    at = np.arange(points.shape[1])
    crossed: BoolArray = np.asarray(below.any(axis=0))
    before = np.where(row > 0, points[np.maximum(row - 1, 0), at], lo)
    return crossed, before, points[row, at]


def batch_max(
    l_max_q: FloatArray, quantiles: FloatArray, batch: FloatArray, cols: npt.NDArray[np.intp]
) -> FloatArray:
    """Expected longest context of a batch of ``batch + 1`` requests (the tagged one included).

    The maximum of m draws sits near the quantile m / (m + 1) of the step-weighted length
    distribution; interpolated between the tabulated quantiles and held to their range (the last
    one is the model's ``lmax_quantile`` cap). ``l_max_q`` is (Q, elements); ``batch`` holds the
    batches of the elements ``cols``.
    """
    m = batch + 1.0
    if len(quantiles) == 1:
        only: FloatArray = l_max_q[0, cols]
        return only
    # np.clip and 2-d fancy indexing are slow on arrays this size; this runs every Newton step.
    q = np.minimum(np.maximum(m / (m + 1.0), quantiles[0]), quantiles[-1])
    hi = np.minimum(np.maximum(np.searchsorted(quantiles, q, side="left"), 1), len(quantiles) - 1)
    q0, q1 = quantiles[hi - 1], quantiles[hi]
    w = np.minimum(np.maximum((q - q0) / (q1 - q0), 0.0), 1.0)
    flat = l_max_q.ravel()
    stride = l_max_q.shape[1]
    out: FloatArray = (1.0 - w) * flat[(hi - 1) * stride + cols] + w * flat[hi * stride + cols]
    return out
