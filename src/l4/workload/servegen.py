"""ServeGen workloads: per-client arrival processes and length distributions over a day.

ServeGen (Xiang et al., NSDI'26; alibaba/ServeGen, Apache-2.0) describes production traffic of
Alibaba Cloud Model Studio per *client*: for every 600-s window of the day a client has a rate, the
coefficient of variation of its inter-arrival times and a fitted family (Gamma or Weibull, with
shape and scale); every 6 h a dataset gives its input and output length distributions. The
bundled files (``data/servegen-*.json.gz``, written by ``tools/pack_servegen.py``) keep that per
client, lengths as quantiles at fixed probability levels.

A workload for the span ``[start_s, start_s + duration_s)`` of the day (wrapping at midnight) is
built as ServeGen's README describes: per client and window, inter-arrival times are drawn from
the window's family and rescaled so their mean is ``1 / rate``; each request's input and output
lengths are drawn from the client's latest dataset at or before the window (by the quantile
function, linearly interpolated between the stored levels); the clients' requests are merged in
time order. Rates are multiplied by ``rate_factor`` (the caller sets the mean rate with it).

Guarantees: the same inputs and seed give the same arrays; arrivals are sorted, within the span
(as offsets from its start), lengths >= 1; the expected mean rate over the span is
``native_rate_rps(...) * rate_factor``.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import zlib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

from l4.errors import ValidationError, WorkloadError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
GAMMA, WEIBULL = 0, 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeGenClient:
    client: int
    windows: dict[int, tuple[float, float, int, float, float]]  # start -> rate, cv, fam, k, scale
    dataset_starts_s: tuple[int, ...]  # sorted
    input_quantiles: FloatArray  # (datasets, levels)
    output_quantiles: FloatArray

    def dataset_at(self, day_s: int) -> int:
        """Index of the latest dataset at or before ``day_s`` (the first one before any)."""
        k = int(np.searchsorted(self.dataset_starts_s, day_s, side="right")) - 1
        return max(k, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeGenData:
    name: str
    window_s: int
    day_s: int
    levels: FloatArray
    clients: tuple[ServeGenClient, ...]


def parse_servegen(text: str, what: str) -> ServeGenData:
    """The bundled JSON document; ``WorkloadError`` naming ``what`` when it is malformed."""
    try:
        doc = json.loads(text)
        if doc.get("format") != "l4-servegen-1":
            raise ValueError(f"unknown format {doc.get('format')!r}")
        levels = np.asarray(doc["levels"], dtype=np.float64)
        clients = []
        for c in doc["clients"]:
            windows = {
                int(w[0]): (float(w[1]), float(w[2]), int(w[3]), float(w[4]), float(w[5]))
                for w in c["windows"]
            }
            starts = tuple(int(d[0]) for d in c["datasets"])
            inputs = np.asarray([d[1]["input"] for d in c["datasets"]], dtype=np.float64)
            outputs = np.asarray([d[1]["output"] for d in c["datasets"]], dtype=np.float64)
            if inputs.shape != (len(starts), len(levels)) or outputs.shape != inputs.shape:
                raise ValueError(f"client {c['client']}: quantile tables do not match the levels")
            clients.append(
                ServeGenClient(
                    client=int(c["client"]),
                    windows=windows,
                    dataset_starts_s=starts,
                    input_quantiles=inputs,
                    output_quantiles=outputs,
                )
            )
        return ServeGenData(
            name=str(doc["name"]),
            window_s=int(doc["window_s"]),
            day_s=int(doc["day_s"]),
            levels=levels,
            clients=tuple(clients),
        )
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise WorkloadError(f"{what}: not a ServeGen workload file ({err})") from err


@functools.lru_cache(maxsize=4)
def load_servegen(file_name: str) -> ServeGenData:
    """A bundled ServeGen workload (cached)."""
    blob = resources.files("l4.workload").joinpath("data", file_name).read_bytes()
    return parse_servegen(gzip.decompress(blob).decode("ascii"), f"bundled {file_name}")


def _slots(data: ServeGenData, start_s: float, duration_s: float) -> list[tuple[float, int]]:
    """(span offset of the window's start, its start in the day) for every window the span
    touches; the span may run past midnight (it wraps) or over several days."""
    w = data.window_s
    first = math.floor(start_s / w) * w
    out = []
    t = float(first)
    while t < start_s + duration_s:
        out.append((t - start_s, int(t) % data.day_s))
        t += w
    return out


def native_rate_rps(data: ServeGenData, start_s: float, duration_s: float) -> float:
    """Mean arrival rate of all clients over the span, at the traces' own rates."""
    if not duration_s > 0:
        raise ValidationError(f"a ServeGen span must be > 0 s, got {duration_s}")
    total = 0.0
    for offset, day_t in _slots(data, start_s, duration_s):
        lo, hi = max(offset, 0.0), min(offset + data.window_s, duration_s)
        for c in data.clients:
            win = c.windows.get(day_t)
            if win is not None:
                total += win[0] * (hi - lo)
    return total / duration_s


def _family_mean(family: int, shape: float, scale: float) -> float:
    if family == GAMMA:
        return shape * scale
    return scale * math.gamma(1.0 + 1.0 / shape)


def _intervals(rng: np.random.Generator, family: int, shape: float, n: int) -> FloatArray:
    """``n`` draws of the family with unit scale (the caller rescales them)."""
    if family == GAMMA:
        return rng.gamma(shape, 1.0, size=n)
    return rng.weibull(shape, size=n)


def _window_arrivals(
    rng: np.random.Generator, rate_rps: float, family: int, shape: float, length_s: float
) -> FloatArray:
    """Renewal arrivals in ``[0, length_s)`` with mean interval ``1 / rate_rps``."""
    unit_mean = _family_mean(family, shape, 1.0)
    if not (rate_rps > 0 and unit_mean > 0 and math.isfinite(unit_mean)):
        return np.empty(0)
    stretch = 1.0 / (rate_rps * unit_mean)
    out: list[FloatArray] = []
    t = 0.0
    while t < length_s:
        # Enough draws to pass the window's end in most cases; loop for the rest.
        n = max(16, math.ceil(1.5 * rate_rps * (length_s - t)) + 16)
        times = t + np.cumsum(_intervals(rng, family, shape, n) * stretch)
        out.append(times[times < length_s])
        t = float(times[-1])
    return np.concatenate(out) if out else np.empty(0)


def _lengths(
    rng: np.random.Generator, levels: FloatArray, quantiles: FloatArray, n: int
) -> IntArray:
    u = rng.random(n)
    return np.maximum(np.rint(np.interp(u, levels, quantiles)), 1).astype(np.int64)


def generate_servegen(
    data: ServeGenData, *, start_s: float, duration_s: float, rate_factor: float, seed: int
) -> tuple[FloatArray, IntArray, IntArray]:
    """(arrival_s from the span's start, input_tokens, output_tokens), sorted by arrival."""
    if not rate_factor > 0:
        raise ValidationError(f"ServeGen rate factor must be > 0, got {rate_factor}")
    # One stream per (workload, seed); clients and windows draw from it in a fixed order.
    rng = np.random.default_rng([seed, zlib.crc32(data.name.encode())])
    times: list[FloatArray] = []
    inputs: list[IntArray] = []
    outputs: list[IntArray] = []
    order: list[IntArray] = []
    for k, c in enumerate(data.clients):
        for offset, day_t in _slots(data, start_s, duration_s):
            win = c.windows.get(day_t)
            if win is None:
                continue
            rate, _cv, family, shape, _scale = win
            t = offset + _window_arrivals(rng, rate * rate_factor, family, shape, data.window_s)
            t = t[(t >= 0.0) & (t < duration_s)]
            if not len(t):
                continue
            d = c.dataset_at(day_t)
            times.append(t)
            inputs.append(_lengths(rng, data.levels, c.input_quantiles[d], len(t)))
            outputs.append(_lengths(rng, data.levels, c.output_quantiles[d], len(t)))
            order.append(np.full(len(t), k, dtype=np.int64))
    if not times:
        return np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    t_all = np.concatenate(times)
    idx = np.lexsort((np.concatenate(order), t_all))  # by time, then client order
    return t_all[idx], np.concatenate(inputs)[idx], np.concatenate(outputs)[idx]
