"""The arrival rate a command replays its trace at, and where that rate came from.

One rule for `l4 simulate`, `l4 capacity` and `l4 plan`, so they agree on the same trace:

* ``--rate R`` sets the base rate; otherwise the trace's recorded arrival times set it (or, for a
  bundled trace without timestamps, its bundled default rate).
* ``--rate-scale S`` multiplies the base rate. Without it a *bundled* trace runs at
  ``DEMO_RATE_SCALE`` (x4) unless ``--rate`` is given, and anything else runs at x1: a user's trace
  file is replayed at its recorded times.

``rate_fields`` gives the keys every report carries (``rate`` in requests/s, ``rate_scale``,
``rate_source`` in words), so no report has to rebuild the sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from l4.workload import Workload, bundled_trace, bundled_traces

# The bundled default workload at x1 leaves the default 16-instance cluster nearly idle, and every
# policy looks the same; x4 puts round robin near 90% SLO attainment on Mooncake, where policies
# differ. It is a demonstration default, so it only ever applies to bundled traces.
DEMO_RATE_SCALE = 4.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RateChoice:
    """The rate options of one command after defaults: ``rate_rps`` None means the trace's own."""

    trace: str
    rate_rps: float | None
    rate_scale: float
    scale_source: str  # "--rate-scale", "bundled-default" or "default"

    @property
    def bundled(self) -> bool:
        return self.trace in bundled_traces()

    def base_words(self, *, timestamped: bool) -> str:
        """Where the unscaled rate comes from, in a few words."""
        if self.rate_rps is not None:
            return f"--rate {self.rate_rps:g} req/s"
        if timestamped:
            return "trace timestamps"
        if self.bundled:
            return f"bundled default {bundled_trace(self.trace).default_rate_rps:g} req/s"
        return "trace"  # not reached: a file without timestamps needs --rate

    def scale_words(self) -> str:
        """The multiplier and why it is what it is."""
        why = {
            "--rate-scale": "--rate-scale",
            "bundled-default": "default for bundled traces; --rate-scale 1 for the trace's rate",
            "default": "recorded times" if self.rate_rps is None else "default",
        }[self.scale_source]
        return f"x{self.rate_scale:g} ({why})"


def choose_rate(trace: str, *, rate_rps: float | None, rate_scale: float | None) -> RateChoice:
    """Apply the defaults to ``--trace``, ``--rate`` and ``--rate-scale`` (see the module doc)."""
    if rate_scale is not None:
        return RateChoice(
            trace=trace,
            rate_rps=rate_rps,
            rate_scale=float(rate_scale),
            scale_source="--rate-scale",
        )
    if rate_rps is None and trace in bundled_traces():
        return RateChoice(
            trace=trace, rate_rps=None, rate_scale=DEMO_RATE_SCALE, scale_source="bundled-default"
        )
    return RateChoice(trace=trace, rate_rps=rate_rps, rate_scale=1.0, scale_source="default")


def rate_fields(choice: RateChoice, workload: Workload) -> dict[str, object]:
    """``rate`` (mean requests/s of the workload as run), ``rate_scale`` and ``rate_source``."""
    return {
        "rate": round(workload.mean_rate_rps, 6),
        "rate_scale": choice.rate_scale,
        "rate_source": f"{choice.base_words(timestamped=workload.timestamped)} "
        f"{choice.scale_words()}",
    }


def rate_caption(fields: dict[str, object]) -> str:
    """``13.6 req/s = trace timestamps x4 (...)``: the rate as a table caption states it."""
    rate = fields["rate"]
    text = f"{rate:.3g} req/s" if isinstance(rate, float | int) else str(rate)
    return f"{text} = {fields['rate_source']}"
