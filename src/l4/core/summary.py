"""Workload summaries on the length grid: what the stage model needs, as prefix sums.

A ``WorkloadSummary`` holds counts observed over a window of ``duration_s`` seconds, per grid
bucket: arrivals by prompt length (and their prompt tokens and squared prompt tokens), decode
token-steps by context length (and the sum of those contexts), and crossings per boundary (requests
whose context reached ``g_k`` having started below it: the migrations a boundary at ``g_k`` would
cause). A request with prompt ``p`` and output ``o`` decodes at contexts ``[p, p + o)``.

Guarantees: ``ranges()`` gives, for every stage ``[g_i, g_j)`` at once, rates equal to the direct
sums over the requests (prefix sums, so each range is O(1)); counts are additive, so summaries of
disjoint windows or of several instances' windows can be combined, and the interval kernel splits
exactly (a request's window ``[a, b)`` then ``[b, c)`` counts as ``[a, c)``).

Three ways in: requests (a ``Workload`` or lengths), a histogram dict (``summary_from_histogram``,
format below), or live counts filled by instance agents (construct ``WorkloadSummary`` from
``arrival_counts`` and ``interval_counts``). The histogram format, version 1::

    {"format": "l4-length-histogram", "version": 1,
     "rate_rps": 3.4,            # or "duration_s": the window the counts were observed over
     "bins": [{"input_tokens": 1024, "output_tokens": 256, "count": 120}, ...],
     "arrival_batch_excess": 0}  # optional: E[X^2]/E[X] - 1 of simultaneous-arrival groups

Counts may be fractional; with ``rate_rps`` the window is ``sum(count) / rate_rps``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from l4.core.grid import LengthGrid
from l4.errors import ValidationError
from l4.request import RequestSpec
from l4.workload import Workload

FloatArray = npt.NDArray[np.float64]
HISTOGRAM_FORMAT = "l4-length-histogram"
DEFAULT_LMAX_QUANTILE = 0.99
# Quantiles at which l_max is tabulated, for batches of 1, 2, 3, 4, 7, 9, 19, 39 requests.
BATCH_MAX_QUANTILES = (0.5, 2 / 3, 0.75, 0.8, 0.875, 0.9, 0.95, 0.975)
# Arrival spread: counted per second, about the mean of each 10 s (``arrival_spread``).
SPREAD_WINDOW_S = 4.0
SPREAD_BLOCK_WINDOWS = 10


def _frozen(values: npt.ArrayLike, size: int, name: str) -> FloatArray:
    a = np.array(values, dtype=np.float64)
    if a.shape != (size,):
        raise ValidationError(f"summary field {name} must have {size} entries, got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValidationError(f"summary field {name} must be finite and >= 0")
    a.setflags(write=False)
    return a


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class WorkloadSummary:
    """Counts per bucket over ``duration_s`` (arrays are read-only, one entry per bucket)."""

    grid: LengthGrid
    duration_s: float
    arrivals: FloatArray  # requests whose prompt lies in the bucket
    prompt_tokens: FloatArray  # their prompt tokens
    prompt_tokens_sq: FloatArray  # their squared prompt tokens (prefill attention, spread)
    decode_steps: FloatArray  # decode token-steps whose context lies in the bucket
    decode_length_sum: FloatArray  # sum of those contexts (for the step-weighted mean length)
    crossings: FloatArray  # [k]: requests reaching g_k from below; crossings[0] == 0
    max_length_tokens: float = 0.0  # largest context seen (the open last bucket's top)
    # Requests that arrive together (a trace with coarse timestamps, a client sending a batch)
    # wait for each other's prefill whatever the load: E[X^2] / E[X] - 1 over the sizes X of the
    # groups of simultaneous arrivals, 0 when no two arrive at once (Poisson). TTFT uses it.
    arrival_batch_excess: float = 0.0
    # Arrivals that bunch over seconds (a trace's bursts): ``arrival_spread`` below, per pair of
    # prompt buckets; None: unknown, planned as Poisson. The stage model prices it.
    arrival_spread: FloatArray | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValidationError(f"summary window must be > 0 s, got {self.duration_s}")
        k = self.grid.num_buckets
        for name in (
            "arrivals",
            "prompt_tokens",
            "prompt_tokens_sq",
            "decode_steps",
            "decode_length_sum",
            "crossings",
        ):
            object.__setattr__(self, name, _frozen(getattr(self, name), k, name))
        if self.crossings[0] != 0:
            raise ValidationError("no request can cross the 0-token boundary")
        x = self.arrival_batch_excess
        if not (math.isfinite(x) and x >= 0):
            raise ValidationError(f"arrival batch excess must be finite and >= 0, got {x}")
        if self.arrival_spread is not None:
            spread = np.array(self.arrival_spread, dtype=np.float64)
            if spread.shape != (k, k) or not np.all(np.isfinite(spread)):
                raise ValidationError(f"arrival spread must be a finite {k} x {k} matrix")
            spread.flags.writeable = False
            object.__setattr__(self, "arrival_spread", spread)

    @property
    def num_requests(self) -> float:
        return float(self.arrivals.sum())

    def scaled(self, rate_factor: float) -> WorkloadSummary:
        """The same mix at ``rate_factor`` times the rate (the window shrinks)."""
        if not rate_factor > 0:
            raise ValidationError(f"rate factor must be > 0, got {rate_factor}")
        return _replace_duration(self, self.duration_s / rate_factor)

    def combined(self, other: WorkloadSummary) -> WorkloadSummary:
        """Counts of two parts of the cluster observed over the same window (e.g. two instances)."""
        _check_same_grid(self, other)
        return _blend(self, other, 1.0, 1.0, self.duration_s)

    def ranges(self, lmax_quantile: float = DEFAULT_LMAX_QUANTILE) -> RangeTable:
        return range_table(self, lmax_quantile)


def _check_same_grid(a: WorkloadSummary, b: WorkloadSummary) -> None:
    if a.grid != b.grid:
        raise ValidationError("summaries on different grids cannot be combined")


def _replace_duration(s: WorkloadSummary, duration_s: float) -> WorkloadSummary:
    return _blend(s, s, 1.0, 0.0, duration_s)


def _blend(
    a: WorkloadSummary, b: WorkloadSummary, wa: float, wb: float, duration_s: float
) -> WorkloadSummary:
    def mix(name: str) -> FloatArray:
        out: FloatArray = wa * getattr(a, name) + wb * getattr(b, name)
        return out

    return WorkloadSummary(
        grid=a.grid,
        duration_s=duration_s,
        arrivals=mix("arrivals"),
        prompt_tokens=mix("prompt_tokens"),
        prompt_tokens_sq=mix("prompt_tokens_sq"),
        decode_steps=mix("decode_steps"),
        decode_length_sum=mix("decode_length_sum"),
        crossings=mix("crossings"),
        max_length_tokens=max(a.max_length_tokens, b.max_length_tokens if wb else 0.0),
        arrival_batch_excess=_weighted_excess(a, b, wa, wb),
        arrival_spread=_weighted_spread(a, b, wa, wb),
    )


def _weighted_excess(a: WorkloadSummary, b: WorkloadSummary, wa: float, wb: float) -> float:
    """Arrival-weighted mean of the two batch excesses."""
    na, nb = wa * float(a.arrivals.sum()), wb * float(b.arrivals.sum())
    if na + nb <= 0:
        return a.arrival_batch_excess
    return (na * a.arrival_batch_excess + nb * b.arrival_batch_excess) / (na + nb)


def _weighted_spread(
    a: WorkloadSummary, b: WorkloadSummary, wa: float, wb: float
) -> FloatArray | None:
    """Arrival-weighted mean of the two arrival spreads (an unknown one counts as Poisson)."""
    if a.arrival_spread is None and (b.arrival_spread is None or not wb):
        return None
    na, nb = wa * float(a.arrivals.sum()), wb * float(b.arrivals.sum())
    k = a.grid.num_buckets
    sa = np.zeros((k, k)) if a.arrival_spread is None else a.arrival_spread
    sb = np.zeros((k, k)) if b.arrival_spread is None else b.arrival_spread
    if na + nb <= 0:
        return sa
    out: FloatArray = (na * sa + nb * sb) / (na + nb)
    return out


def arrival_batch_excess(arrival_s: npt.ArrayLike, *, together_s: float = 1e-3) -> float:
    """``E[X^2] / E[X] - 1`` of the groups of arrivals less than ``together_s`` apart."""
    t = np.sort(np.asarray(arrival_s, dtype=np.float64))
    if t.size < 2:
        return 0.0
    starts = np.flatnonzero(np.diff(t, prepend=-np.inf) >= together_s)
    sizes = np.diff(np.append(starts, t.size)).astype(np.float64)
    return float((sizes**2).sum() / sizes.sum() - 1.0)


def arrival_spread(
    grid: LengthGrid,
    arrival_s: npt.ArrayLike,
    prompt_tokens: npt.ArrayLike,
    *,
    window_s: float = SPREAD_WINDOW_S,
    block_windows: int = SPREAD_BLOCK_WINDOWS,
) -> FloatArray:
    """How arrivals bunch over seconds, per pair of prompt buckets ``(k, l)``:

        (Cov(N_k, N_l) - [k == l] E[N_k]) / E[N]

    over whole windows of ``window_s``, ``N_k`` the window's arrivals in bucket ``k`` and ``N``
    all of them. Zero, up to sampling noise, for Poisson arrivals; for a range of buckets ``R``
    the sum over ``R x R`` times ``E[N] / E[N_R]`` is the range's index of dispersion less one
    (``range_table`` sums it). Drift slower than ``block_windows`` windows is left out (each
    block is measured about its own mean): re-planning follows drift, not bursts. Fewer than
    two whole windows: zeros."""
    t = np.asarray(arrival_s, dtype=np.float64)
    p = np.asarray(prompt_tokens, dtype=np.float64)
    k = grid.num_buckets
    out: FloatArray = np.zeros((k, k))
    if t.shape != p.shape or t.size < 2:
        return out
    windows = int((t.max() - t.min()) // window_s)
    if windows < 2:
        return out
    w = ((t - t.min()) // window_s).astype(np.intp)
    keep = w < windows  # the last, partial window would read as a lull
    counts = np.zeros((windows, k))
    np.add.at(counts, (w[keep], grid.bucket_of(p[keep])), 1.0)
    per_block = max(block_windows, 2)
    block = np.arange(windows) // per_block
    if windows % per_block == 1:
        block[-1] -= 1  # a one-window block has no spread of its own: join the one before
    sizes = np.bincount(block).astype(np.float64)
    means = np.zeros((sizes.size, k))
    np.add.at(means, block, counts)
    means /= sizes[:, None]
    dev = counts - means[block]
    cov = dev.T @ dev / (windows - sizes.size)
    per_window = counts.mean(axis=0)
    total = float(per_window.sum())
    if total <= 0:
        return out
    out = (cov - np.diag(per_window)) / total
    return out


def ema(previous: WorkloadSummary, current: WorkloadSummary, smoothing: float) -> WorkloadSummary:
    """Exponential moving average of the rates: ``smoothing * current + (1 - s) * previous``.

    The result is expressed over a 1 s window (counts are rates).
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValidationError(f"EMA smoothing must lie in [0, 1], got {smoothing}")
    _check_same_grid(previous, current)
    return _blend(
        previous,
        current,
        (1.0 - smoothing) / previous.duration_s,
        smoothing / current.duration_s,
        1.0,
    )


# ---- kernels: counts from prompts and from decode intervals ------------------------------------
def arrival_counts(
    grid: LengthGrid, prompt_tokens: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(arrivals, prompt tokens, squared prompt tokens) per prompt bucket."""
    p = np.asarray(prompt_tokens, dtype=np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    b = grid.bucket_of(p)
    k = grid.num_buckets
    return (
        np.bincount(b, weights=w, minlength=k).astype(np.float64),
        np.bincount(b, weights=w * p, minlength=k).astype(np.float64),
        np.bincount(b, weights=w * p * p, minlength=k).astype(np.float64),
    )


def _sorted_cumsums(keys: FloatArray, *values: FloatArray) -> tuple[FloatArray, list[FloatArray]]:
    order = np.argsort(keys, kind="stable")
    sums = [np.concatenate(([0.0], np.cumsum(v[order]))) for v in values]
    return keys[order], sums


def interval_counts(
    grid: LengthGrid,
    start_tokens: npt.ArrayLike,
    end_tokens: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    starts_at_prompt: npt.ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(decode steps, context sum, crossings) per bucket for decodes at contexts ``[a, b)``.

    ``starts_at_prompt[r]`` says ``a`` is the request's prompt length (its first decode), so
    reaching ``g == a`` is no crossing; default True (whole requests). A live agent reporting the
    contexts a running request decoded at in its window passes False for requests admitted before.
    Closed forms over sorted ends, O((n + K) log n): no n x K matrix.
    """
    a = np.asarray(start_tokens, dtype=np.float64)
    b = np.asarray(end_tokens, dtype=np.float64)
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)
    fresh = (
        np.ones(a.shape, dtype=bool)
        if starts_at_prompt is None
        else np.asarray(starts_at_prompt, dtype=bool)
    )
    if a.shape != b.shape or a.shape != w.shape or a.shape != fresh.shape:
        raise ValidationError("interval arrays must have the same length")
    if np.any(b < a) or np.any(a < 0) or np.any(w < 0):
        raise ValidationError("intervals need 0 <= start <= end and weights >= 0")
    x = grid.edges_array()[:-1]  # g_0 .. g_{K-1}; the top (index K) is the total

    def tri(y: FloatArray) -> FloatArray:  # sum of the integers 0 .. y-1
        out: FloatArray = y * (y - 1.0) / 2.0
        return out

    # S(x) = sum w * |[a, b) ∩ [0, x)|, W(x) = sum w * (sum of t in [a, min(b, x))), both as
    # (terms over a < x) minus (terms over b < x); terms with b == x vanish, so sides are free.
    sa, (cw_a, cwa_a, cwt_a) = _sorted_cumsums(a, w, w * a, w * tri(a))
    sb, (cw_b, cwb_b, cwt_b) = _sorted_cumsums(b, w, w * b, w * tri(b))
    ia = np.searchsorted(sa, x, side="left")
    ib = np.searchsorted(sb, x, side="left")
    steps_below = (x * cw_a[ia] - cwa_a[ia]) - (x * cw_b[ib] - cwb_b[ib])
    length_below = (tri(x) * cw_a[ia] - cwt_a[ia]) - (tri(x) * cw_b[ib] - cwt_b[ib])
    steps_total = float(np.sum(w * (b - a)))
    length_total = float(np.sum(w * (tri(b) - tri(a))))
    steps = np.diff(np.append(steps_below, steps_total))
    lengths = np.diff(np.append(length_below, length_total))
    # crossings(g) = #{a <= g < b} - #{fresh, a == g}
    ia_r = np.searchsorted(sa, x, side="right")
    ib_r = np.searchsorted(sb, x, side="right")
    covering = cw_a[ia_r] - cw_b[ib_r]
    sf, (cw_f,) = _sorted_cumsums(a[fresh], w[fresh])
    at_start = cw_f[np.searchsorted(sf, x, side="right")] - cw_f[np.searchsorted(sf, x, "left")]
    crossings = covering - at_start
    crossings[0] = 0.0
    # Rounding of the closed forms can leave tiny negatives on empty buckets.
    return (
        np.maximum(steps, 0.0),
        np.maximum(lengths, 0.0),
        np.maximum(crossings, 0.0),
    )


# ---- builders ----------------------------------------------------------------------------------
def summarize_lengths(
    grid: LengthGrid,
    *,
    input_tokens: npt.ArrayLike,
    output_tokens: npt.ArrayLike,
    duration_s: float,
    weights: npt.ArrayLike | None = None,
    arrival_batch_excess: float = 0.0,
) -> WorkloadSummary:
    """Summary of whole requests (prompt p, output o, weight w) seen over ``duration_s``."""
    p = np.asarray(input_tokens, dtype=np.float64)
    o = np.asarray(output_tokens, dtype=np.float64)
    if p.shape != o.shape or p.ndim != 1:
        raise ValidationError("input and output token arrays must be 1-d of equal length")
    if np.any(p < 0) or np.any(o < 0):
        raise ValidationError("token counts must be >= 0")
    return summary_from_counts(
        grid,
        duration_s=duration_s,
        prompts=p,
        starts=p,
        ends=p + o,
        weights=weights,
        arrival_batch_excess=arrival_batch_excess,
    )


def summary_from_counts(
    grid: LengthGrid,
    *,
    duration_s: float,
    prompts: npt.ArrayLike,
    starts: npt.ArrayLike,
    ends: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    starts_at_prompt: npt.ArrayLike | None = None,
    arrival_batch_excess: float = 0.0,
) -> WorkloadSummary:
    """Summary of arrivals with these prompts and of decodes at contexts ``[start, end)``.

    Whole requests pass their prompts as ``starts``; a live window passes what each request
    decoded in it (``interval_counts`` explains ``starts_at_prompt``). ``weights`` apply to both.
    """
    arrivals, tokens, tokens_sq = arrival_counts(grid, prompts, weights)
    steps, lengths, crossings = interval_counts(
        grid, starts, ends, weights, starts_at_prompt=starts_at_prompt
    )
    e = np.asarray(ends, dtype=np.float64)
    return WorkloadSummary(
        grid=grid,
        duration_s=duration_s,
        arrivals=arrivals,
        prompt_tokens=tokens,
        prompt_tokens_sq=tokens_sq,
        decode_steps=steps,
        decode_length_sum=lengths,
        crossings=crossings,
        max_length_tokens=float(e.max()) if e.size else 0.0,
        arrival_batch_excess=arrival_batch_excess,
    )


def summarize_requests(
    grid: LengthGrid, requests: Sequence[RequestSpec], *, duration_s: float | None = None
) -> WorkloadSummary:
    """Summary of requests; the window defaults to their arrival span."""
    if not requests:
        raise ValidationError("cannot summarise an empty list of requests")
    if duration_s is None:
        duration_s = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests)
        if not duration_s > 0:
            raise ValidationError("requests arrive at one instant: give the window duration_s")
    arrivals = [r.arrival_s for r in requests]
    prompts = [r.input_tokens for r in requests]
    summary = summarize_lengths(
        grid,
        input_tokens=prompts,
        output_tokens=[r.output_tokens for r in requests],
        duration_s=duration_s,
        arrival_batch_excess=arrival_batch_excess(arrivals),
    )
    return replace(summary, arrival_spread=arrival_spread(grid, arrivals, prompts))


def summarize_workload(grid: LengthGrid, workload: Workload) -> WorkloadSummary:
    """Summary at the workload's own mean rate (requests / ``mean_rate_rps`` seconds)."""
    if not workload.mean_rate_rps > 0:
        raise ValidationError(f"workload {workload.name!r} has no arrival rate")
    return summarize_requests(
        grid, workload.requests, duration_s=len(workload.requests) / workload.mean_rate_rps
    )


def summary_from_histogram(grid: LengthGrid, doc: Mapping[str, Any]) -> WorkloadSummary:
    """Summary from a parsed ``l4-length-histogram`` document (see the module docstring)."""
    if doc.get("format") != HISTOGRAM_FORMAT or doc.get("version") != 1:
        raise ValidationError(f'histogram must say "format": "{HISTOGRAM_FORMAT}", "version": 1')
    bins = doc.get("bins")
    if not isinstance(bins, list) or not bins:
        raise ValidationError('histogram needs a non-empty "bins" list')
    try:
        p = np.array([float(b["input_tokens"]) for b in bins])
        o = np.array([float(b["output_tokens"]) for b in bins])
        c = np.array([float(b["count"]) for b in bins])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"histogram bin malformed: {exc}") from exc
    if np.any(c < 0) or not c.sum() > 0 or np.any(p < 0) or np.any(o < 1):
        raise ValidationError("histogram bins need counts >= 0 (some > 0) and output_tokens >= 1")
    has_rate, has_window = "rate_rps" in doc, "duration_s" in doc
    if has_rate == has_window:
        raise ValidationError('histogram needs exactly one of "rate_rps" and "duration_s"')
    value = float(doc["rate_rps"] if has_rate else doc["duration_s"])
    if not (math.isfinite(value) and value > 0):
        raise ValidationError("histogram rate_rps / duration_s must be > 0")
    duration = float(c.sum()) / value if has_rate else value
    excess = float(doc.get("arrival_batch_excess", 0.0))
    if not (math.isfinite(excess) and excess >= 0):
        raise ValidationError("histogram arrival_batch_excess must be a number >= 0")
    return summarize_lengths(
        grid,
        input_tokens=p,
        output_tokens=o,
        duration_s=duration,
        weights=c,
        arrival_batch_excess=excess,
    )


# ---- prefix sums: every stage range at once ----------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RangeTable:
    """Per-second rates for every stage ``[g_i, g_j)``, arrays indexed ``[i, j]`` (0 <= i, j <= K).

    Entries with ``i >= j`` are zero. ``crossing_rps[k]`` is per boundary (0 at 0 and at K).
    ``l_mean``/``l_max`` of a range without decodes are the range's lower edge.
    """

    bounds_tokens: FloatArray  # g_0 .. g_{K-1}, then the max context at index K
    arrival_rps: FloatArray
    prompt_tokens_ps: FloatArray
    prompt_tokens_sq_ps: FloatArray
    decode_steps_ps: FloatArray
    decode_length_ps: FloatArray
    l_mean_tokens: FloatArray
    l_max_tokens: FloatArray  # at the table's l_max quantile
    crossing_rps: FloatArray = field(repr=False)
    arrival_batch_excess: float = 0.0  # of the whole stream; a stage sees a thinned part
    # The arrival spread summed over each range's pairs of buckets: a stage's arrivals in a
    # second vary by (1 + spread_excess[i, j] * total / stage rate) times a Poisson stream's.
    spread_excess: FloatArray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    # l_max at several quantiles (ascending, the last one is the table's), shape (Q, K+1, K+1):
    # the expected longest context of a batch of m requests sits near quantile m / (m + 1).
    lmax_quantiles: tuple[float, ...] = field(default=(), repr=False)
    l_max_by_quantile: FloatArray = field(default_factory=lambda: np.zeros((0, 0, 0)), repr=False)


def _pairwise(counts: FloatArray, duration_s: float) -> FloatArray:
    c = np.concatenate(([0.0], np.cumsum(counts))) / duration_s
    out: FloatArray = np.triu(c[None, :] - c[:, None], k=1)
    return out


def _pairwise_block(matrix: FloatArray | None, k: int) -> FloatArray:
    """``out[i, j]`` = the sum of ``matrix`` over ``[i, j) x [i, j)`` (2-D prefix sums)."""
    if matrix is None:
        return np.zeros((k + 1, k + 1))
    c = np.zeros((k + 1, k + 1))
    c[1:, 1:] = matrix.cumsum(axis=0).cumsum(axis=1)
    d = np.diag(c)
    out: FloatArray = np.triu(d[None, :] - c - c.T + d[:, None], k=1)
    return out


def range_table(
    summary: WorkloadSummary, lmax_quantile: float = DEFAULT_LMAX_QUANTILE
) -> RangeTable:
    """Prefix-sum differences for all ranges; l_max is the step-weighted ``lmax_quantile``."""
    if not 0.0 < lmax_quantile <= 1.0:
        raise ValidationError(f"l_max quantile must lie in (0, 1], got {lmax_quantile}")
    d = summary.duration_s
    k = summary.grid.num_buckets
    bounds = summary.grid.edges_array()
    top = max(float(summary.grid.edges_tokens[-1]) + 1.0, summary.max_length_tokens)
    bounds[k] = min(bounds[k], top)  # the open bucket's lengths end at the longest one seen
    steps = _pairwise(summary.decode_steps, d)
    lengths = _pairwise(summary.decode_length_sum, d)
    lo = np.broadcast_to(bounds[:, None], steps.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        l_mean = np.where(steps > 0, lengths / steps, lo)
    cum = np.concatenate(([0.0], np.cumsum(summary.decode_steps)))
    qs = (*(q for q in BATCH_MAX_QUANTILES if q < lmax_quantile), lmax_quantile)
    by_q = np.stack([_quantile(summary, bounds, cum, steps, l_mean, lo, q) for q in qs])
    l_max = by_q[-1]
    crossing = np.append(summary.crossings, 0.0) / d
    return RangeTable(
        bounds_tokens=bounds,
        arrival_rps=_pairwise(summary.arrivals, d),
        prompt_tokens_ps=_pairwise(summary.prompt_tokens, d),
        prompt_tokens_sq_ps=_pairwise(summary.prompt_tokens_sq, d),
        decode_steps_ps=steps,
        decode_length_ps=lengths,
        l_mean_tokens=l_mean,
        l_max_tokens=l_max,
        crossing_rps=crossing,
        arrival_batch_excess=summary.arrival_batch_excess,
        spread_excess=_pairwise_block(summary.arrival_spread, k),
        lmax_quantiles=qs,
        l_max_by_quantile=by_q,
    )


def _quantile(
    summary: WorkloadSummary,
    bounds: FloatArray,
    cum: FloatArray,
    steps: FloatArray,
    l_mean: FloatArray,
    lo: FloatArray,
    q: float,
) -> FloatArray:
    """Step-weighted ``q``-quantile of the lengths of every range, interpolated in its bucket."""
    k = summary.grid.num_buckets
    i_idx, j_idx = np.indices(steps.shape)
    target = cum[i_idx] + q * (cum[j_idx] - cum[i_idx])
    b = np.clip(np.searchsorted(cum, target, side="left") - 1, i_idx, np.maximum(j_idx - 1, i_idx))
    b = np.clip(b, 0, k - 1)
    width = cum[b + 1] - cum[b]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(width > 0, (target - cum[b]) / width, 0.0)
    l_q = bounds[b] + np.clip(frac, 0.0, 1.0) * (bounds[b + 1] - bounds[b])
    if summary.max_length_tokens > 0:  # never above the longest context seen
        l_q = np.minimum(l_q, summary.max_length_tokens)
    out: FloatArray = np.where(steps > 0, np.maximum(l_q, l_mean), lo)
    return out
