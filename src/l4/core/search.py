"""Search for the least-cost partition of the length grid into stages (L4.md section 5).

The search knows nothing of QoE: it sees stage costs as a table ``cost[i, j, n - 1]`` of shape
(K+1, K+1, E) (stage ``[g_i, g_j)`` served by ``n`` instances, infinite when unsustainable) or, for
large fleets, through an oracle ``oracle(lo, hi, counts)`` giving the raw costs of stages
``[g_lo[p], g_hi[p])`` with each of ``counts`` instances, shape (pairs, counts). A stage can
leave instances idle, so the cost of ``n`` instances is the running minimum over ``n' <= n``
(``idle_best``).

* ``solve_dp``: ``f[k][e] = min over k' < k, 1 <= n <= e of f[k'][e - n] + C(k', k, n)``,
  ``f[0][0] = 0``, read back through back-pointers. Exact (equal to ``brute_force``), O(K^2 E^2)
  work in K vectorised steps; ties go to the smallest (k', n).
* ``block_search``: for ``E <= max_units`` it is ``solve_dp`` on the whole table. Above, the
  partition is the DP optimum when instances come in blocks of ``q = ceil(E / max_units)`` (a table
  of ``P x E // q`` costs, P = K (K + 1) / 2 stages), then the E instances are split over that
  partition exactly (``allocate``). The result is never worse than the block optimum; against the
  exact optimum (partition P*, counts n*) it is worse by at most the cost of rounding each of the
  optimum's stages down to whole blocks, ``sum over P* of C(q floor(n*/q)) - C(n*)`` (when every
  stage of P* has >= q instances). Memory O(P E / q + S E) for S stages, time
  O(K^2 (E / q)^2 + S E^2).
* ``allocate``: the exact split of E instances over fixed stages, by min-plus convolution.
* ``merge_segments``: joins the adjacent pair with the largest saving while joining does not raise
  the cost (equal-cost ties: fewer hops).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Segment = tuple[int, int, int]  # (i, j, n): grid indices of [g_i, g_j) and its instance count
# Raw costs of stages [g_lo[p], g_hi[p]) with each of ``counts`` instances: shape (pairs, counts).
CostOracle = Callable[[IntArray, IntArray, IntArray], FloatArray]
# Largest fleet searched instance by instance; larger ones are searched in blocks (see above).
EXACT_MAX_INSTANCES = 64
# Elements of an (e, m) block of a min-plus convolution held at once (16 MB of float64).
_CONV_CHUNK = 1 << 21


def idle_best(cost: FloatArray) -> IntArray:
    """Index along the last axis of the running minimum (an extra instance can always idle).

    ``cost[..., best[..., n]]`` is the least cost with at most ``n + 1`` instances; ties go to the
    larger count.
    """
    counts = np.arange(cost.shape[-1])
    pos = np.where(cost <= np.minimum.accumulate(cost, axis=-1), counts, 0)
    best: IntArray = np.maximum.accumulate(pos, axis=-1)
    return best


def solve_dp(cost: FloatArray) -> tuple[float, list[Segment]]:
    """Least total cost and its segments for a table ``cost[i, j, n - 1]`` of shape (K+1, K+1, E).

    Uses all E instances. Ties are broken towards the smallest (k', n) in flattened order.
    """
    k1, _, e_max = cost.shape
    # fp[i, e_max + e] = f[i][e]; the e_max entries on either side stay inf (e - n < 0, unused).
    fp = np.full((k1, 2 * e_max + 2), np.inf)
    fp[0, e_max] = 0.0
    back_i = np.zeros((k1, e_max + 1), dtype=np.intp)
    back_n = np.zeros((k1, e_max + 1), dtype=np.intp)
    rows = np.arange(e_max + 1)
    for k in range(1, k1):
        # window[i, e, n - 1] = f[i][e - n], a strided view of f reversed: no copy.
        window = sliding_window_view(fp[:k, ::-1], e_max, axis=1)[:, e_max + 2 : 1 : -1]
        cand = window + cost[:k, k][:, None, :]  # (k, E + 1, E)
        # Argmin over n, then over k': the first (k', n) in flattened order, as one argmin.
        n_arg = np.argmin(cand, axis=2)
        vals = np.take_along_axis(cand, n_arg[:, :, None], axis=2)[:, :, 0]
        i_arg = np.argmin(vals, axis=0)
        fp[k, e_max : 2 * e_max + 1] = vals[i_arg, rows]
        back_i[k] = i_arg
        back_n[k] = n_arg[i_arg, rows] + 1
    total = float(fp[k1 - 1, 2 * e_max])
    segments: list[Segment] = []
    k, e = k1 - 1, e_max
    if np.isfinite(total):
        while k > 0:
            i, n = int(back_i[k, e]), int(back_n[k, e])
            segments.append((i, k, n))
            k, e = i, e - n
        segments.reverse()
    return total, segments


def _partitions(k1: int) -> Iterator[tuple[int, ...]]:
    """Every boundary sequence 0 = b_0 < ... < b_N = K over the grid indices."""
    inner = range(1, k1 - 1)
    for size in range(len(inner) + 1):
        for cut in itertools.combinations(inner, size):
            yield (0, *cut, k1 - 1)


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every way to write ``total`` as ``parts`` positive integers."""
    for cut in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cut, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def brute_force(cost: FloatArray) -> tuple[float, list[Segment]]:
    """Reference for tests: enumerate every partition and instance split (small cases only)."""
    k1, _, e_max = cost.shape
    best, best_segments = np.inf, []
    for bounds in _partitions(k1):
        parts = len(bounds) - 1
        if parts > e_max:
            continue
        for split in _compositions(e_max, parts):
            segs = [(bounds[s], bounds[s + 1], split[s]) for s in range(parts)]
            total = float(sum(cost[i, j, n - 1] for i, j, n in segs))
            if total < best:
                best, best_segments = total, segs
    return float(best), best_segments


def merge_segments(
    cost_of: Callable[[Sequence[Segment]], FloatArray], segments: list[Segment]
) -> list[Segment]:
    """Join the adjacent pair with the largest saving while joining does not raise the cost.

    ``cost_of(segments)`` returns the cost of each segment (batched: one call per round).
    """
    segs = list(segments)
    while len(segs) > 1:
        joined = [(a[0], b[1], a[2] + b[2]) for a, b in itertools.pairwise(segs)]
        own = cost_of(segs)
        savings = own[:-1] + own[1:] - cost_of(joined)
        best = int(np.nanargmax(savings)) if not np.all(np.isnan(savings)) else -1
        if best < 0 or not savings[best] >= 0:
            break
        segs[best : best + 2] = [joined[best]]
    return segs


def merge_greedy(cost: FloatArray, segments: list[Segment]) -> list[Segment]:
    """``merge_segments`` on a table ``cost[i, j, n - 1]``."""

    def cost_of(segs: Sequence[Segment]) -> FloatArray:
        return np.array([cost[i, j, n - 1] for i, j, n in segs], dtype=np.float64)

    return merge_segments(cost_of, segments)


def allocate(rows: FloatArray) -> tuple[float, list[int]]:
    """Least ``sum rows[s, n_s - 1]`` over ``n_s >= 1`` with ``sum n_s = E`` for rows (S, E).

    Exact: one min-plus convolution per stage, ``g'[e] = min over m of g[m] + rows[s, e - m - 1]``,
    evaluated in blocks of e on a strided view (no E x E array). Ties give the earlier stages the
    most instances. Returns (inf, []) when every split is infinite.
    """
    num_stages, e_max = rows.shape
    g = np.concatenate(([np.inf], rows[0]))  # g[e]: the stages so far with e instances
    backs: list[IntArray] = []
    chunk = max(1, _CONV_CHUNK // (e_max + 1))
    for s in range(1, num_stages):
        # padded[e_max + d] = rows[s, d - 1] for d >= 1, inf for d <= 0
        padded = np.concatenate((np.full(e_max + 1, np.inf), rows[s]))
        window = sliding_window_view(padded, e_max + 1)  # window[e, t] = padded[e + t]
        g_rev = g[::-1]  # g_rev[t] = g[e_max - t]; window[e, t] = rows[s, e - (e_max - t) - 1]
        last = s == num_stages - 1
        lo = e_max if last else 0  # the last stage only needs e = E
        new_g = np.full(e_max + 1, np.inf)
        back = np.zeros(e_max + 1, dtype=np.intp)
        for start in range(lo, e_max + 1, chunk):
            stop = min(start + chunk, e_max + 1)
            cand = window[start:stop] + g_rev[None, :]
            arg = np.argmin(cand, axis=1)  # smallest t = most instances to the earlier stages
            new_g[start:stop] = cand[np.arange(stop - start), arg]
            back[start:stop] = e_max - arg  # m: instances of the earlier stages
        g = new_g
        backs.append(back)
    total = float(g[e_max])
    if not np.isfinite(total):
        return float("inf"), []
    counts = [0] * num_stages
    e = e_max
    for s in range(num_stages - 1, 0, -1):
        m = int(backs[s - 1][e])
        counts[s] = e - m
        e = m
    counts[0] = e
    return total, counts


def _block_table(
    oracle: CostOracle, k1: int, counts: IntArray
) -> tuple[FloatArray, IntArray, IntArray]:
    """Idle-minimised table (K+1, K+1, len(counts)) of the costs at ``counts`` instances."""
    ii, jj = np.triu_indices(k1, k=1)
    raw = oracle(ii, jj, counts)
    best = idle_best(raw)
    table = np.full((k1, k1, len(counts)), np.inf)
    table[ii, jj] = np.take_along_axis(raw, best, axis=1)
    return table, ii, jj


def block_size(num_instances: int, max_units: int = EXACT_MAX_INSTANCES) -> int:
    """Instances per block when searching ``num_instances`` in at most ``max_units`` blocks."""
    return -(-num_instances // max_units)


def block_search(
    oracle: CostOracle, k1: int, num_instances: int, *, max_units: int = EXACT_MAX_INSTANCES
) -> tuple[float, list[Segment]]:
    """Partition by the DP over blocks of instances, split exact (module docstring): (cost, segs).

    The cost is infinite (and the segments empty) when no plan the search reaches is finite.
    """
    q = block_size(num_instances, max_units)
    units = num_instances // q
    table, _, _ = _block_table(oracle, k1, q * np.arange(1, units + 1, dtype=np.intp))
    total, segments = solve_dp(table)
    if q == 1 or not np.isfinite(total):
        return total, segments
    lo = np.array([i for i, _, _ in segments], dtype=np.intp)
    hi = np.array([j for _, j, _ in segments], dtype=np.intp)
    raw = oracle(lo, hi, np.arange(1, num_instances + 1, dtype=np.intp))
    rows = np.take_along_axis(raw, idle_best(raw), axis=1)
    total, counts = allocate(rows)
    return total, [(i, j, n) for (i, j, _), n in zip(segments, counts, strict=True)]
