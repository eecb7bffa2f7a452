"""Prometheus metrics of one emulated engine, under vLLM's (V1) names, in a registry of its own.

Every series carries the labels vLLM's (V1) carry: `model_name` (the served model name) and
`engine` (the engine index as a string; here the instance index under `--instances K`).
Latencies are measured when the step loop hands tokens over (so a late loop shows), in emulated
seconds (wall seconds times the time scale), so that they compare with `l4 simulate` and with a
real GPU whatever `--time-scale` the engine runs at. One metric is L4's own:
`l4:step_lateness_seconds`, how late (wall seconds) the step loop woke after each step's
deadline, which says whether the CPU keeps up with the time scale.

Names, types, labels and buckets follow vLLM's `vllm/v1/metrics/loggers.py` (PrometheusStatLogger)
and the per-request intervals its `vllm/v1/metrics/stats.py` defines: queue = arrival to first
scheduled step, prefill = first scheduled step to first token, decode = first to last token,
inference = first scheduled step to last token. A request finished by a stop string counts as
finished ("stop"); one a client abandoned counts only in `vllm:request_success{finished_reason=
"abort"}`. The token counts per iteration follow vLLM too: a request's whole prompt counts in the
step that produced its first token.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# vLLM's bucket boundaries for these histograms (seconds).
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# vLLM's FinishReason values, every one exported from the start (at 0) as vLLM does.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
# Wall-clock lateness of the step loop: from well under a timer tick to a stalled loop.
_LATENESS_BUCKETS = (
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip


def buckets_1_2_5(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (vLLM's token-count buckets)."""
    out: list[int] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return tuple(out)
            out.append(mantissa * scale)
        scale *= 10


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishedRequest:
    """One finished request's times (emulated seconds) and counts, as vLLM's metrics see it."""

    finish_reason: str
    arrival_s: float
    scheduled_s: float
    first_token_s: float
    last_token_s: float
    prompt_tokens: int
    generation_tokens: int


class EngineMetrics:
    """The metric objects of one engine; `registry` is what `/metrics` renders."""

    def __init__(
        self,
        model_name: str,
        engine: int = 0,
        *,
        num_gpu_blocks: int | None = None,
        block_size_tokens: int = 16,
        max_model_len: int = 131072,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name", "engine"]
        r = self.registry
        if num_gpu_blocks is not None:
            # vLLM's info gauge (value 1): routers read the KV capacity from its labels.
            cache_labels = ["engine", "block_size", "num_gpu_blocks", "kv_cache_size_tokens"]
            Gauge(
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
                cache_labels,
                registry=r,
            ).labels(
                str(engine),
                str(block_size_tokens),
                str(num_gpu_blocks),
                str(num_gpu_blocks * block_size_tokens),
            ).set(1)
        self._running = Gauge(
            "vllm:num_requests_running", "Requests in model execution batches.", labels, registry=r
        )
        self._waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting to be processed.", labels, registry=r
        )
        self._kv = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage (1 = 100 percent).", labels, registry=r
        )
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token in seconds.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Inter-token latency in seconds.",
            labels,
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self._tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            labels,
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency in seconds.",
            labels,
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        # prometheus-client appends the `_total` suffix of counters.
        self._prompt = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r
        )
        self._generation = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r
        )
        self._preemptions = Counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            labels,
            registry=r,
        )
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=r,
        )

        def latency(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, labels, buckets=_E2E_BUCKETS, registry=r)

        self._queue = latency(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
        )
        self._prefill = latency(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
        )
        self._decode = latency(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
        )
        self._inference = latency(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
        )
        token_buckets = buckets_1_2_5(max_model_len)
        self._request_prompt = Histogram(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            labels,
            buckets=token_buckets,
            registry=r,
        )
        self._request_generation = Histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            labels,
            buckets=token_buckets,
            registry=r,
        )
        self._iteration = Histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            labels,
            buckets=_ITERATION_TOKENS_BUCKETS,
            registry=r,
        )
        self._lateness = Histogram(
            "l4:step_lateness_seconds",
            "Wall seconds the emulated engine's step loop woke after a step's deadline.",
            labels,
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        values = (model_name, str(engine))
        self.running = self._running.labels(*values)
        self.waiting = self._waiting.labels(*values)
        self.kv_usage = self._kv.labels(*values)
        self.ttft = self._ttft.labels(*values)
        self.itl = self._itl.labels(*values)
        self.tpot = self._tpot.labels(*values)
        self.e2e = self._e2e.labels(*values)
        self.prompt_tokens = self._prompt.labels(*values)
        self.generation_tokens = self._generation.labels(*values)
        self.step_lateness = self._lateness.labels(*values)
        self.preemptions = self._preemptions.labels(*values)
        self.iteration_tokens = self._iteration.labels(*values)
        self._success_by_reason = {
            reason: self._success.labels(*values, reason) for reason in FINISH_REASONS
        }
        self._queue_time = self._queue.labels(*values)
        self._prefill_time = self._prefill.labels(*values)
        self._decode_time = self._decode.labels(*values)
        self._inference_time = self._inference.labels(*values)
        self._prompt_per_request = self._request_prompt.labels(*values)
        self._generation_per_request = self._request_generation.labels(*values)

    def request_finished(self, done: FinishedRequest) -> None:
        """Record a request that ended with its tokens (length, EOS or a stop string)."""
        self._success_by_reason[done.finish_reason].inc()
        self.e2e.observe(done.last_token_s - done.arrival_s)
        self._queue_time.observe(done.scheduled_s - done.arrival_s)
        self._prefill_time.observe(done.first_token_s - done.scheduled_s)
        self._decode_time.observe(done.last_token_s - done.first_token_s)
        self._inference_time.observe(done.last_token_s - done.scheduled_s)
        self._prompt_per_request.observe(done.prompt_tokens)
        self._generation_per_request.observe(done.generation_tokens)
        # As vLLM: the mean over the decode phase, 0 for a one-token answer.
        decoded = done.generation_tokens - 1
        self.tpot.observe((done.last_token_s - done.first_token_s) / decoded if decoded else 0.0)

    def request_aborted(self) -> None:
        """Record a request its client abandoned before it finished."""
        self._success_by_reason["abort"].inc()
