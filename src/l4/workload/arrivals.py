"""Arrival processes and trace surgery: rescale, generate, cut, clip.

All functions are pure and take and return numpy arrays; randomness comes only from the seed
passed in. Guarantees: every arrival array returned is non-decreasing (scaling by a positive
factor and cumulative sums of non-negative gaps preserve order under IEEE rounding), and cutting
keeps a prefix, so the order of requests never changes.

The mean rate of a set of arrivals is ``n / t_last`` with arrivals measured from the start of the
workload (t = 0): for a trace rescaled to rate r this is exactly r, and for generated arrivals it
is the usual estimate of the rate of the process.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def mean_rate_rps(arrival_s: FloatArray) -> float:
    """Requests per second over the span [0, last arrival]; 0.0 where that is undefined (no
    requests, an empty span, or a span so short that the rate overflows)."""
    if len(arrival_s) == 0 or arrival_s[-1] <= 0:
        return 0.0
    rate = len(arrival_s) / float(arrival_s[-1])
    return rate if math.isfinite(rate) else 0.0


def rescale(
    arrival_s: FloatArray, *, rate_rps: float | None, rate_scale: float | None
) -> FloatArray:
    """Shift sorted arrivals to start at 0, rescale to ``rate_rps`` if given, then speed up by
    ``rate_scale`` (arrival times divided by it). The caller checks that the trace has a defined
    mean rate (``mean_rate_rps > 0``) before asking for ``rate_rps``."""
    times: FloatArray = arrival_s - arrival_s[0]
    if rate_rps is not None:
        times = times * (mean_rate_rps(times) / rate_rps)
    if rate_scale is not None:
        times = times / rate_scale
    return times


def rotate(arrival_s: FloatArray, offset_s: float) -> tuple[FloatArray, IntArray]:
    """Replay sorted arrivals from ``offset_s`` into the trace (its own time) and wrap around to
    its beginning after its end, as if the trace repeated with one mean gap between its last and
    first arrival. Returns the new arrival times (from 0) and the order of the original requests.

    Windows of a trace are the only independent samples a timestamped trace has: this is what
    gives its runs a seed."""
    times: FloatArray = arrival_s - arrival_s[0]
    n = len(times)
    period = float(times[-1]) * n / (n - 1) if n > 1 else 0.0
    if period == 0.0:
        return times, np.arange(n, dtype=np.int64)
    offset = offset_s % period
    start = int(np.searchsorted(times, offset, side="left"))
    order: IntArray = np.concatenate(
        (np.arange(start, n, dtype=np.int64), np.arange(0, start, dtype=np.int64))
    )
    shifted: FloatArray = np.concatenate(
        (times[start:] - offset, times[:start] + (period - offset))
    )
    return shifted - shifted[0], order


def gamma_arrivals(num_requests: int, *, rate_rps: float, shape: float, seed: int) -> FloatArray:
    """Arrivals with i.i.d. Gamma(shape) gaps of mean 1/rate; shape 1 is a Poisson process.

    The coefficient of variation of the gaps is 1/sqrt(shape): shape < 1 is burstier than Poisson.
    """
    rng = np.random.default_rng(seed)
    gaps: FloatArray = rng.gamma(shape, 1.0 / (rate_rps * shape), size=num_requests)
    times: FloatArray = np.cumsum(gaps)
    return times


def cut_length(arrival_s: FloatArray, *, duration_s: float | None, num_requests: int | None) -> int:
    """How many leading requests to keep: arrivals < duration_s, at most num_requests."""
    keep = len(arrival_s)
    if duration_s is not None:
        keep = int(np.searchsorted(arrival_s, duration_s, side="left"))
    if num_requests is not None:
        keep = min(keep, num_requests)
    return keep


def clip_lengths(
    input_tokens: IntArray, output_tokens: IntArray, *, max_context_tokens: int
) -> tuple[IntArray, IntArray, int]:
    """Clip lengths to the context: input <= max-1 (leave room for one output token), then
    output <= max - input. Returns the clipped arrays and how many requests changed."""
    inputs = np.minimum(input_tokens, max_context_tokens - 1)
    outputs = np.minimum(output_tokens, max_context_tokens - inputs)
    changed = (inputs != input_tokens) | (outputs != output_tokens)
    return inputs, outputs, int(np.count_nonzero(changed))
