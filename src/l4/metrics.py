"""Request metrics as EVALUATION.md defines them (the definitions of ``vllm bench serve``).

Guarantees:

* ``summarize`` returns one policy's JSON object, built only from plain ``int``, ``float``,
  ``str``, ``None``, ``dict`` values: never NaN or infinity. Where nothing was measured (no
  latency sample, a zero-length window, no request, no instance) the value is ``None`` (JSON
  ``null``), never 0.0, so that "nothing measured" cannot be mistaken for "instantaneous".
* Percentiles use numpy's default ("linear") method, and the weighted ones used for the ITL equal
  ``np.percentile(np.repeat(values, weights), q)`` bit for bit, without building that array.
* ``ItlRecorder`` stores O(number of calls) numbers; only ``samples()`` expands, vectorised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from l4.errors import InvariantError, ValidationError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))

# Length classes by request total tokens (prompt + output), EVALUATION.md: (name, lo, hi), a
# request of t tokens is in the class with lo <= t < hi (hi None: open). Capacity judges every
# class with at least MIN_CLASS_REQUESTS requests, so that no class can starve unnoticed.
LENGTH_CLASSES: tuple[tuple[str, int, int | None], ...] = (
    ("<2K", 0, 2048),
    ("2K-8K", 2048, 8192),
    ("8K-32K", 8192, 32768),
    (">=32K", 32768, None),
)
MIN_CLASS_REQUESTS = 20

# A request served exactly at its unloaded latency must meet a scale-1 SLO even though the
# simulator sums step times in another order than the cost model: allow float rounding only.
_SLO_RTOL = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """What happened to one request in one run."""

    request_id: int
    arrival_s: float
    input_tokens: int  # as served (after clipping)
    output_tokens: int  # the request's target output length
    generated_tokens: int  # tokens actually produced (== output_tokens when finished)
    first_token_s: float | None
    finish_s: float | None  # None = unfinished
    instances: tuple[int, ...]  # instance ids visited, in order
    migrations: int
    preemptions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SloConfig:
    """Goodput SLOs: scaled by each request's unloaded latency unless absolute ones are set."""

    scale: float = 5.0  # --slo-scale
    ttft_s: float | None = None  # --slo-ttft, absolute, replaces the scaled TTFT SLO
    tpot_s: float | None = None  # --slo-tpot, absolute, replaces the scaled TPOT SLO

    def __post_init__(self) -> None:
        if not self.scale > 0.0:
            raise ValidationError(f"SLO scale must be > 0, got {self.scale}")
        for name, value in (("TTFT", self.ttft_s), ("TPOT", self.tpot_s)):
            if value is not None and not value > 0.0:
                raise ValidationError(f"absolute {name} SLO must be > 0 s, got {value}")


class ItlRecorder:
    """Collects inter-token latencies compactly.

    The simulator advances many identical decode steps at once, so gaps arrive as arithmetic runs:
    ``add_run(first_s, slope_s, steps, weight)`` means ``steps`` consecutive gaps ``first_s``,
    ``first_s + slope_s``, ..., each observed by ``weight`` requests; ``add_gap(value_s)`` adds one
    gap of weight 1 (a gap across a preemption or a migration). ``steps`` and ``weight`` must be
    >= 0 (runs with either 0 are ignored); this is checked in ``samples``, not on the hot path.
    """

    __slots__ = ("_gaps", "_run_first", "_run_slope", "_run_steps", "_run_weight")

    def __init__(self) -> None:
        # Python lists: an append is about twice as fast as array('d').append on the hot path.
        self._run_first: list[float] = []
        self._run_slope: list[float] = []
        self._run_steps: list[int] = []
        self._run_weight: list[int] = []
        self._gaps: list[float] = []

    def add_run(self, first_s: float, slope_s: float, steps: int, weight: int) -> None:
        self._run_first.append(first_s)
        self._run_slope.append(slope_s)
        self._run_steps.append(steps)
        self._run_weight.append(weight)

    def add_gap(self, value_s: float) -> None:
        self._gaps.append(value_s)

    @property
    def num_calls(self) -> int:
        """Runs plus single gaps recorded: the size of the storage."""
        return len(self._run_first) + len(self._gaps)

    def samples(self) -> tuple[FloatArray, IntArray]:
        """(values, weights): run ``i`` expands to ``first + k * slope`` for ``k < steps``."""
        first = np.array(self._run_first, dtype=np.float64)
        slope = np.array(self._run_slope, dtype=np.float64)
        steps = np.array(self._run_steps, dtype=np.int64)
        weight = np.array(self._run_weight, dtype=np.int64)
        if np.any(steps < 0) or np.any(weight < 0):
            raise InvariantError("ITL run with negative steps or weight")
        keep = (steps > 0) & (weight > 0)
        first, slope, steps, weight = first[keep], slope[keep], steps[keep], weight[keep]
        run_of = np.repeat(np.arange(len(steps)), steps)
        starts = np.cumsum(steps) - steps  # index of each run's first gap
        k = np.arange(len(run_of), dtype=np.int64) - starts[run_of]
        run_values = first[run_of] + k * slope[run_of]
        gaps = np.array(self._gaps, dtype=np.float64)
        values = np.concatenate((run_values, gaps))
        weights = np.concatenate((weight[run_of], np.ones(len(gaps), dtype=np.int64)))
        return values, weights


def weighted_percentiles(
    values: npt.ArrayLike, weights: npt.ArrayLike, qs: Sequence[float]
) -> list[float]:
    """``np.percentile(np.repeat(values, weights), qs)`` (linear method), computed in O(m log m).

    Weights are non-negative integers; the total weight must be > 0.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.int64)
    q = np.asarray(qs, dtype=np.float64)
    if np.any(w < 0):
        raise ValidationError("percentile weights must be >= 0")
    if np.any((q < 0.0) | (q > 100.0)):
        raise ValidationError(f"percentiles must be in [0, 100], got {list(qs)}")
    keep = w > 0
    v, w = v[keep], w[keep]
    if len(v) == 0:
        raise ValidationError("percentile of an empty sample")
    order = np.argsort(v, kind="stable")
    v, cum = v[order], np.cumsum(w[order])
    n = int(cum[-1])
    # Same arithmetic as numpy's "linear" method (virtual index (n - 1) * q / 100, then its lerp
    # that switches form at gamma = 0.5) so that results match bit for bit.
    virtual = (n - 1) * (q / 100.0)
    lo = np.floor(virtual)
    gamma = virtual - lo
    lo_i = np.minimum(lo.astype(np.int64), n - 1)
    hi_i = np.minimum(lo_i + 1, n - 1)
    # Expanded index i holds the first sorted value whose cumulative weight exceeds i.
    a = v[np.searchsorted(cum, lo_i, side="right")]
    b = v[np.searchsorted(cum, hi_i, side="right")]
    diff = b - a
    out = np.where(gamma >= 0.5, b - diff * (1.0 - gamma), a + diff * gamma)
    return [float(x) for x in out]


def distribution(
    values: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> dict[str, float | None]:
    """{"mean", "p50", "p90", "p99"} of a (weighted) sample; all ``None`` when it is empty."""
    v = np.asarray(values, dtype=np.float64)
    w = np.ones(len(v), dtype=np.int64) if weights is None else np.asarray(weights, np.int64)
    keep = w > 0
    v, w = v[keep], w[keep]
    stats: dict[str, float | None] = dict.fromkeys(("mean", *(name for name, _ in PERCENTILES)))
    if len(v) == 0:
        return stats
    stats["mean"] = float(np.dot(v, w) / np.sum(w, dtype=np.float64))
    pcts = weighted_percentiles(v, w, [q for _, q in PERCENTILES])
    stats.update(zip((name for name, _ in PERCENTILES), pcts, strict=True))
    return stats


def latency_samples(records: Sequence[RequestRecord]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(TTFT, TPOT, E2E) samples in seconds, each over the requests the definition covers.

    TTFT over requests with a first token; TPOT over finished requests with more than one output
    token; E2E over finished requests.
    """
    ttft: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    for r in records:
        if r.first_token_s is not None:
            ttft.append(r.first_token_s - r.arrival_s)
        if r.finish_s is None:
            continue
        if r.first_token_s is None:
            raise InvariantError(f"request {r.request_id} finished without a first token")
        e2e.append(r.finish_s - r.arrival_s)
        if r.output_tokens > 1:
            tpot.append((r.finish_s - r.first_token_s) / (r.output_tokens - 1))
    return np.array(ttft), np.array(tpot), np.array(e2e)


def _slo_limits_s(
    r: RequestRecord, slo: SloConfig, unloaded: Callable[[int, int], tuple[float, float]]
) -> tuple[float, float]:
    """(TTFT, TPOT) limits of one request; asks ``unloaded`` only when a scaled SLO is used."""
    if slo.ttft_s is not None and slo.tpot_s is not None:
        return slo.ttft_s, slo.tpot_s
    base_ttft_s, base_tpot_s = unloaded(r.input_tokens, r.output_tokens)
    ttft_s = slo.scale * base_ttft_s if slo.ttft_s is None else slo.ttft_s
    tpot_s = slo.scale * base_tpot_s if slo.tpot_s is None else slo.tpot_s
    return ttft_s, tpot_s


def _meets_slo(
    r: RequestRecord, slo: SloConfig, unloaded: Callable[[int, int], tuple[float, float]]
) -> bool:
    if r.finish_s is None or r.first_token_s is None:
        return False  # an unfinished request never meets its SLOs
    ttft_limit_s, tpot_limit_s = _slo_limits_s(r, slo, unloaded)
    if r.first_token_s - r.arrival_s > ttft_limit_s * (1.0 + _SLO_RTOL):
        return False
    if r.output_tokens <= 1:
        return True  # no inter-token gap: judged on TTFT only
    tpot_s = (r.finish_s - r.first_token_s) / (r.output_tokens - 1)
    return tpot_s <= tpot_limit_s * (1.0 + _SLO_RTOL)


def _memoised(
    f: Callable[[int, int], tuple[float, float]],
) -> Callable[[int, int], tuple[float, float]]:
    cache: dict[tuple[int, int], tuple[float, float]] = {}

    def lookup(input_tokens: int, output_tokens: int) -> tuple[float, float]:
        key = (input_tokens, output_tokens)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = f(input_tokens, output_tokens)
        return hit

    return lookup


def output_tokens_cv(output_tokens_by_group: Sequence[Sequence[int]]) -> float | None:
    """Mean over groups of (population std / mean) of tokens generated per instance.

    A group whose mean is 0 counts as 0.0 (perfectly balanced idleness); empty groups are skipped;
    ``None`` when no group has an instance.
    """
    cvs: list[float] = []
    for group in output_tokens_by_group:
        if len(group) == 0:
            continue
        tokens = np.asarray(group, dtype=np.float64)
        mean = float(tokens.mean())
        cvs.append(0.0 if mean == 0.0 else float(tokens.std()) / mean)
    return float(np.mean(cvs)) if cvs else None


def length_class(total_tokens: int) -> str:
    """Name of the length class of a request of ``total_tokens`` (prompt + output)."""
    for name, _, hi in LENGTH_CLASSES:
        if hi is None or total_tokens < hi:
            return name
    raise InvariantError("the last length class is open")  # pragma: no cover


def class_summaries(
    records: Sequence[RequestRecord],
    *,
    slo: SloConfig,
    unloaded: Callable[[int, int], tuple[float, float]],
) -> dict[str, dict[str, object]]:
    """Per length class (every class, in ``LENGTH_CLASSES`` order): request count, TTFT, TPOT
    and E2E distributions and SLO attainment (``None`` for a class without requests)."""
    by_class: dict[str, list[RequestRecord]] = {name: [] for name, _, _ in LENGTH_CLASSES}
    for r in records:
        by_class[length_class(r.input_tokens + r.output_tokens)].append(r)
    out: dict[str, dict[str, object]] = {}
    for name, members in by_class.items():
        ttft, tpot, e2e = latency_samples(members)
        good = sum(1 for r in members if _meets_slo(r, slo, unloaded))
        out[name] = {
            "requests": len(members),
            "completed": sum(1 for r in members if r.finish_s is not None),
            "ttft_s": distribution(ttft),
            "tpot_s": distribution(tpot),
            "e2e_s": distribution(e2e),
            "slo_attainment": good / len(members) if members else None,
        }
    return out


def _per_s(count: float, window_s: float) -> float | None:
    return count / window_s if window_s > 0.0 else None


def summarize(
    records: Sequence[RequestRecord],
    itl: ItlRecorder,
    *,
    slo: SloConfig,
    unloaded: Callable[[int, int], tuple[float, float]],
    output_tokens_by_group: Sequence[Sequence[int]],
    migrations_by_reason: Mapping[str, int],
    preemptions: int,
    sim_wall_s: float,
) -> dict[str, object]:
    """The JSON object of one policy run (EVALUATION.md).

    The window runs from the first arrival to the last finish (or the last arrival if later);
    rates over a zero-length window are ``None``. ``migrations`` is the sum of
    ``migrations_by_reason``. ``unloaded(input_tokens, output_tokens)`` gives the (TTFT, TPOT) of
    the request alone on an idle instance; it is called once per distinct pair, and not at all when
    both absolute SLOs are set.
    """
    finished = [r for r in records if r.finish_s is not None]
    ttft, tpot, e2e = latency_samples(records)
    itl_values, itl_weights = itl.samples()
    window_s = 0.0
    if records:
        start = min(r.arrival_s for r in records)
        end = max(r.arrival_s for r in records)
        end = max([end, *(r.finish_s for r in finished if r.finish_s is not None)])
        window_s = end - start
    lookup = _memoised(unloaded)
    good = sum(1 for r in records if _meets_slo(r, slo, lookup))
    out_tokens = sum(r.generated_tokens for r in finished)
    return {
        "completed": len(finished),
        "unfinished": len(records) - len(finished),
        "ttft_s": distribution(ttft),
        "tpot_s": distribution(tpot),
        "itl_s": distribution(itl_values, itl_weights),
        "e2e_s": distribution(e2e),
        "throughput": {
            "requests_per_s": _per_s(len(finished), window_s),
            "output_tokens_per_s": _per_s(out_tokens, window_s),
        },
        "goodput_requests_per_s": _per_s(good, window_s),
        "slo_attainment": good / len(records) if records else None,
        "classes": class_summaries(records, slo=slo, unloaded=lookup),
        "migrations": int(sum(migrations_by_reason.values())),
        "migrations_by_reason": {
            k: int(migrations_by_reason[k]) for k in sorted(migrations_by_reason)
        },
        "preemptions": int(preemptions),
        "output_tokens_cv": output_tokens_cv(output_tokens_by_group),
        "window_s": float(window_s),
        "sim_wall_s": float(sim_wall_s),
    }
