"""Prometheus metrics of one emulated engine, under vLLM's (V1) names, in a registry of its own.

Every series carries the labels vLLM's (V1) carry: `model_name` (the served model name) and
`engine` (the engine index as a string; here the instance index under `--instances K`).
Latencies are measured when the step loop hands tokens over (so a late loop shows), in emulated
seconds (wall seconds times the time scale), so that they compare with `l4 simulate` and with a
real GPU whatever `--time-scale` the engine runs at. One metric is L4's own:
`l4:step_lateness_seconds`, how late (wall seconds) the step loop woke after each step's
deadline, which says whether the CPU keeps up with the time scale.
"""

from __future__ import annotations

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
# Wall-clock lateness of the step loop: from well under a timer tick to a stalled loop.
_LATENESS_BUCKETS = (
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip


class EngineMetrics:
    """The metric objects of one engine; `registry` is what `/metrics` renders."""

    def __init__(
        self,
        model_name: str,
        engine: int = 0,
        *,
        num_gpu_blocks: int | None = None,
        block_size_tokens: int = 16,
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
