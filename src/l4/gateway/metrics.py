"""The gateway's Prometheus metrics, in a registry of its own (`GET /metrics`).

Names follow Prometheus conventions with the `l4_` prefix; latency histograms use vLLM's bucket
boundaries so that dashboards can put the gateway's client-side view next to the engines' own
`vllm:` series. Latencies are wall seconds measured at the gateway: from the request's arrival to
the gateway writing the token, so they include the gateway's own overhead.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric

_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_PAUSE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

MIGRATION_OUTCOMES = ("ok", "failed")


class FastHistogram:
    """A histogram observed once per streamed token: a list increment on the hot path (the
    client library's `Histogram.observe` takes a lock and costs ~10 us), rendered as a standard
    Prometheus histogram when scraped. Single-threaded, like the event loop that owns it."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        # `le` is inclusive: the first bound >= value.
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc)
        cumulative = 0
        buckets = []
        for bound, count in zip([*self._bounds, float("inf")], self._counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([], buckets, self._sum)
        yield family

    def describe(self) -> list[Metric]:
        return []


class GatewayMetrics:
    def __init__(self, backends: list[str]) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "l4_requests", "Client requests by route and HTTP status.", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "l4_time_to_first_token_seconds",
            "Gateway-side time to first token (arrival to the first token written).",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.itl = FastHistogram(
            "l4_inter_token_latency_seconds",
            "Gateway-side gaps between consecutive chunks written to a client.",
            _ITL_BUCKETS,
            r,
        )
        self.e2e = Histogram(
            "l4_e2e_request_latency_seconds",
            "Gateway-side end-to-end latency of finished requests.",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "l4_prompt_tokens", "Prompt tokens of the requests served.", registry=r
        )
        self.generation_tokens = Counter(
            "l4_generation_tokens", "Tokens relayed to clients.", registry=r
        )
        self.migrations = Counter(
            "l4_migrations",
            "Requests moved between instances by token replay, by reason and outcome.",
            ["reason", "outcome"],
            registry=r,
        )
        self.replayed_tokens = Counter(
            "l4_replayed_tokens",
            "Tokens re-sent as prompt to a destination instance (prompt + generated).",
            registry=r,
        )
        self.handoff_pause = Histogram(
            "l4_handoff_pause_seconds",
            "From the last token at the source to the first token at the destination of a move.",
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.policy_tick = Histogram(
            "l4_policy_tick_seconds",
            "Wall time of one policy tick on the event loop (loads, cascades, bids): every "
            "stream waits while it runs. Refinement and re-plans are solved off the loop.",
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.planning = Histogram(
            "l4_planning_seconds",
            "Wall time from a refinement round's start to its result (boundary moves and, every "
            "re-plan period, a new plan), solved in a worker thread; applied at the next tick.",
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "l4_backend_in_flight_requests", "Requests the gateway has at each backend.",
            ["backend"], registry=r,
        )  # fmt: skip
        self.healthy = Gauge(
            "l4_backend_healthy", "1 while the backend is in service, 0 while taken out.",
            ["backend"], registry=r,
        )  # fmt: skip
        self.backend_failures = Counter(
            "l4_backend_failures", "Failed upstream calls (refused, timed out, 5xx, cut).",
            ["backend"], registry=r,
        )  # fmt: skip
        self.boundary = Gauge(
            "l4_stage_boundary_tokens", "Upper length bound of each stage (the last is +Inf).",
            ["stage"], registry=r,
        )  # fmt: skip
        self.stage_instances = Gauge(
            "l4_stage_instances", "Instances serving each stage.", ["stage"], registry=r
        )
        for b in backends:
            self.healthy.labels(b).set(1)
            self.in_flight.labels(b).set(0)
        for reason in ("cascade", "balance", "drain", "failure"):
            for outcome in MIGRATION_OUTCOMES:
                self.migrations.labels(reason, outcome)
