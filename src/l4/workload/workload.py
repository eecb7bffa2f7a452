"""From a ``WorkloadSpec`` (what the user asked for) to a ``Workload`` (the requests to replay).

Guarantees: the same spec gives an identical ``Workload``; requests are sorted by arrival with
``request_id`` 0..n-1; timestamped traces start at t = 0; no request exceeds the context
(``input_tokens + output_tokens <= max_context_tokens``, both >= 1); a workload is never empty.

Order of operations: arrivals (the trace's own from ``offset_s`` on, rescaled, or generated)
-> cut (duration, then count) -> clip lengths. ``clipped_requests`` therefore counts only the
requests kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l4.errors import ValidationError
from l4.request import RequestSpec
from l4.workload.arrivals import (
    FloatArray,
    IntArray,
    clip_lengths,
    cut_length,
    gamma_arrivals,
    mean_rate_rps,
    rescale,
    rotate,
)
from l4.workload.formats import TraceData
from l4.workload.servegen import generate_servegen, load_servegen, native_rate_rps
from l4.workload.traces import SERVEGEN, BundledTrace, bundled_trace, bundled_traces, resolve_trace


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSpec:
    """What workload to build. Invalid values raise ``ValidationError`` on construction.

    ``burstiness`` is the Gamma shape of generated inter-arrival times: 1.0 is Poisson, smaller
    is burstier (CV = 1/sqrt(burstiness)). It only applies to traces without timestamps.
    """

    trace: str  # bundled name or a path
    max_context_tokens: int  # model context; longer requests are clipped
    rate_rps: float | None = None  # --rate: base mean arrival rate
    rate_scale: float | None = None  # --rate-scale: multiplies the base rate
    duration_s: float | None = None  # cut: keep arrivals < duration (after rescaling)
    num_requests: int | None = None  # cut: keep the first N
    seed: int = 0
    burstiness: float = 1.0
    offset_s: float = 0.0  # start this far into a timestamped trace (its own time), wrapping

    def __post_init__(self) -> None:
        if not isinstance(self.trace, str) or not self.trace:
            raise ValidationError(f"--trace must be a bundled name or a path, got {self.trace!r}")
        _check_int("max_context_tokens", self.max_context_tokens, minimum=2)
        for flag, value in (
            ("--rate", self.rate_rps),
            ("--rate-scale", self.rate_scale),
            ("--duration", self.duration_s),
            ("--burstiness", self.burstiness),
        ):
            if value is not None:
                _check_positive(flag, value)
        if self.num_requests is not None:
            _check_int("--num-requests", self.num_requests, minimum=1)
        _check_int("--seed", self.seed, minimum=0)
        ok = isinstance(self.offset_s, int | float) and not isinstance(self.offset_s, bool)
        if not ok or not math.isfinite(self.offset_s) or self.offset_s < 0:
            raise ValidationError(f"--offset must be a finite number >= 0, got {self.offset_s!r}")


def _check_positive(flag: str, value: object) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        raise ValidationError(f"{flag} must be a finite number > 0, got {value!r}")


def _check_int(flag: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValidationError(f"{flag} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """The requests to replay and how they were obtained."""

    name: str  # bundled name, or the file name of a native trace
    source: str  # "bundled" or the path as given
    timestamped: bool  # arrivals come from the trace (else generated from a seed)
    requests: tuple[RequestSpec, ...] = field(repr=False)
    mean_rate_rps: float  # requests / last arrival (after rescaling and cutting)
    clipped_requests: int  # requests whose lengths were clipped to the context

    def describe(self) -> dict[str, object]:
        """JSON-ready summary for reports."""
        inputs = np.array([r.input_tokens for r in self.requests], dtype=np.int64)
        outputs = np.array([r.output_tokens for r in self.requests], dtype=np.int64)
        summary: dict[str, object] = {
            "name": self.name,
            "source": self.source,
            "timestamped": self.timestamped,
            "requests": len(self.requests),
            "mean_rate_rps": self.mean_rate_rps,
            "duration_s": self.requests[-1].arrival_s if self.requests else 0.0,
        }
        for key, values in (("input_tokens", inputs), ("output_tokens", outputs)):
            p50, p99 = np.percentile(values, [50, 99]) if len(values) else (0.0, 0.0)
            summary[f"{key}_mean"] = float(values.mean()) if len(values) else 0.0
            summary[f"{key}_p50"] = float(p50)
            summary[f"{key}_p99"] = float(p99)
            summary[f"{key}_max"] = int(values.max()) if len(values) else 0
        summary["clipped_requests"] = self.clipped_requests
        return summary


def build_workload(spec: WorkloadSpec) -> Workload:
    """Resolve, load, time, cut and clip the trace that ``spec`` names."""
    if spec.trace in bundled_traces() and bundled_trace(spec.trace).kind == SERVEGEN:
        return servegen_workload(bundled_trace(spec.trace), spec)
    bundled, data = resolve_trace(spec.trace, spec.seed)
    if bundled is not None:
        return workload_from_trace(
            data,
            spec,
            name=bundled.name,
            source="bundled",
            default_rate_rps=bundled.default_rate_rps,
        )
    return workload_from_trace(
        data, spec, name=Path(spec.trace).name, source=spec.trace, default_rate_rps=None
    )


def workload_from_trace(
    data: TraceData,
    spec: WorkloadSpec,
    *,
    name: str,
    source: str,
    default_rate_rps: float | None,
) -> Workload:
    """The pure part of ``build_workload``: parsed columns + spec -> workload."""
    if data.arrival_s is not None:
        arrivals, order = _trace_arrivals(data.arrival_s, spec, name)
        input_tokens, output_tokens = data.input_tokens[order], data.output_tokens[order]
    else:
        arrivals = _generated_arrivals(data.num_requests, spec, name, default_rate_rps)
        input_tokens, output_tokens = data.input_tokens, data.output_tokens

    return _finish(
        arrivals,
        input_tokens,
        output_tokens,
        spec,
        name=name,
        source=source,
        timestamped=data.arrival_s is not None,
    )


def _finish(
    arrivals: FloatArray,
    input_tokens: IntArray,
    output_tokens: IntArray,
    spec: WorkloadSpec,
    *,
    name: str,
    source: str,
    timestamped: bool,
) -> Workload:
    """Cut (duration, then count) and clip sorted arrivals and their lengths into a workload."""
    keep = cut_length(arrivals, duration_s=spec.duration_s, num_requests=spec.num_requests)
    if keep == 0:
        first = f"{float(arrivals[0]):.6g} s" if len(arrivals) else "never"
        raise ValidationError(
            f"--duration {spec.duration_s} s keeps no request of trace {name!r} "
            f"(its first arrival is at {first})"
        )
    arrivals = arrivals[:keep]
    inputs, outputs, clipped = clip_lengths(
        input_tokens[:keep],
        output_tokens[:keep],
        max_context_tokens=spec.max_context_tokens,
    )
    requests = tuple(
        RequestSpec(request_id=i, arrival_s=t, input_tokens=p, output_tokens=o)
        for i, (t, p, o) in enumerate(
            zip(arrivals.tolist(), inputs.tolist(), outputs.tolist(), strict=True)
        )
    )
    return Workload(
        name=name,
        source=source,
        timestamped=timestamped,
        requests=requests,
        mean_rate_rps=mean_rate_rps(arrivals),
        clipped_requests=clipped,
    )


def servegen_workload(trace: BundledTrace, spec: WorkloadSpec) -> Workload:
    """A ServeGen workload: ``spec.offset_s`` is the time of day it starts at (wrapping at
    midnight), the mean rate over the span is ``--rate`` (or the trace's default) times
    ``--rate-scale``, keeping the clients' relative rates; the seed draws arrivals and lengths."""
    if spec.burstiness != 1.0:
        raise ValidationError(
            f"--burstiness does not apply to {trace.name!r}: its clients have their own arrival "
            "processes"
        )
    data = load_servegen(trace.file_name)
    base = spec.rate_rps if spec.rate_rps is not None else trace.default_rate_rps
    assert base is not None
    target = base * (spec.rate_scale if spec.rate_scale is not None else 1.0)
    if spec.duration_s is not None:
        span = spec.duration_s
    else:  # a count cut: generate enough time for it (half again as many, expected)
        span = max(float(data.window_s), 1.5 * (spec.num_requests or 1) / target)
    native = native_rate_rps(data, spec.offset_s, span)
    if not native > 0:
        raise ValidationError(
            f"trace {trace.name!r} has no traffic from {spec.offset_s:g} s into the day for "
            f"{span:g} s: choose another --offset"
        )
    arrivals, inputs, outputs = generate_servegen(
        data,
        start_s=spec.offset_s,
        duration_s=span,
        rate_factor=target / native,
        seed=spec.seed,
    )
    return _finish(
        arrivals, inputs, outputs, spec, name=trace.name, source="bundled", timestamped=False
    )


def _trace_arrivals(
    arrival_s: FloatArray, spec: WorkloadSpec, name: str
) -> tuple[FloatArray, IntArray]:
    """A timestamped trace's arrivals from ``spec.offset_s`` on, rescaled; and the order of its
    requests they now come in."""
    if spec.burstiness != 1.0:
        raise ValidationError(
            f"--burstiness applies to traces without timestamps; trace {name!r} has its own"
        )
    if spec.rate_rps is not None and mean_rate_rps(arrival_s - arrival_s[0]) == 0:
        raise ValidationError(
            f"cannot rescale trace {name!r} to --rate: all its arrivals are at the same time"
        )
    times, order = rotate(arrival_s, spec.offset_s)
    arrivals = rescale(times, rate_rps=spec.rate_rps, rate_scale=spec.rate_scale)
    if not np.isfinite(arrivals[-1]):
        raise ValidationError(f"rescaling trace {name!r} overflows: choose a larger rate")
    return arrivals, order


def _generated_arrivals(
    num_requests: int, spec: WorkloadSpec, name: str, default_rate_rps: float | None
) -> FloatArray:
    """Gamma arrivals at the given (or the bundled default) rate, from ``spec.seed``."""
    if spec.offset_s > 0:
        raise ValidationError(
            f"--offset applies to timestamped traces; trace {name!r} has no arrival times "
            "(its arrivals come from --seed)"
        )
    base_rps = spec.rate_rps if spec.rate_rps is not None else default_rate_rps
    if base_rps is None:
        raise ValidationError(
            f"trace {name!r} has no arrival times (no arrival_s); give a rate with --rate"
        )
    rate = base_rps * (spec.rate_scale if spec.rate_scale is not None else 1.0)
    return gamma_arrivals(num_requests, rate_rps=rate, shape=spec.burstiness, seed=spec.seed)
