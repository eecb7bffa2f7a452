"""Factories for tests: a small hand-made profile, instances and requests."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from l4.core.grid import LengthGrid
from l4.core.migration import MigrationConfig
from l4.core.summary import WorkloadSummary, summarize_lengths
from l4.costmodel import (
    AlphaTable,
    DecodeAttention,
    ModelConstants,
    PiecewiseLinear,
    PrefillAttention,
    Profile,
    StepCostModel,
)
from l4.instance import Instance, InstanceConfig
from l4.instance import Sequence as Seq
from l4.metrics import RequestRecord
from l4.offload import Offload
from l4.request import RequestSpec
from l4.views import ClusterView, InstanceView, PolicyContext, StaticPlan


def tiny_profile(*, kv_capacity_tokens: int = 4096, max_context_tokens: int = 2048) -> Profile:
    """A profile with round numbers: 1 ms per step + 10 us per token, cheap attention."""
    return Profile(
        name="test-tiny",
        description="hand-made profile for tests",
        hardware="none",
        engine="test",
        model=ModelConstants(
            name="tiny",
            num_layers=2,
            num_q_heads=2,
            num_kv_heads=1,
            head_dim=8,
            kv_bytes_per_token=64,
            max_context_tokens=max_context_tokens,
        ),
        kv_capacity_tokens=kv_capacity_tokens,
        default_max_num_seqs=16,
        default_max_num_batched_tokens=256,
        block_size_tokens=16,
        step_fixed_s=1e-3,
        step_per_seq_s=1e-5,
        linear=PiecewiseLinear(x=(1.0, 1024.0), y=(1e-5, 1024e-5)),
        decode_attention=DecodeAttention(base_s=1e-6, per_seq_s=1e-7, bytes_per_s=32e6),
        prefill_attention=PrefillAttention(base_s=1e-6, per_token_s=1e-7, per_token_context_s=1e-9),
        alpha=AlphaTable(num_decodes=(1, 16), decode_only=(0.2, 0.0), with_prefill=(0.9, 0.1)),
    )


def make_instance(
    profile: Profile | None = None, *, instance_id: int = 0, **overrides: int
) -> Instance:
    profile = profile or tiny_profile()
    cfg = InstanceConfig.from_profile(profile)
    if overrides:
        cfg = replace(cfg, **overrides)
    return Instance(instance_id, cfg, StepCostModel(profile))


def req(
    request_id: int, input_tokens: int, output_tokens: int, arrival_s: float = 0.0
) -> RequestSpec:
    return RequestSpec(
        request_id=request_id,
        arrival_s=arrival_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def log_uniform_summary(
    grid: LengthGrid, seed: int, n: int = 400, rate: float = 4.0
) -> WorkloadSummary:
    """``n`` requests with log-uniform prompts (100..60K tokens) and 10..800 outputs at ``rate``."""
    rng = np.random.default_rng(seed)
    prompts = np.exp(rng.uniform(np.log(100), np.log(60_000), n)).astype(int)
    outputs = rng.integers(10, 800, n)
    return summarize_lengths(grid, input_tokens=prompts, output_tokens=outputs, duration_s=n / rate)


def random_records(seed: int, n: int = 40, *, max_ttft_s: float = 0.5) -> list[RequestRecord]:
    """``n`` request records 0.1 s apart, the last two unfinished: TTFT log-uniform in
    [20 ms, ``max_ttft_s``], 20 ms per output token, every fifth request migrated once."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        arrival = float(i) * 0.1
        output = int(rng.integers(1, 50))
        ttft = float(np.exp(rng.uniform(np.log(0.02), np.log(max_ttft_s))))
        finished = i < n - 2
        records.append(
            RequestRecord(
                request_id=i,
                arrival_s=arrival,
                input_tokens=int(rng.integers(10, 2000)),
                output_tokens=output,
                generated_tokens=output if finished else 0,
                first_token_s=arrival + ttft if finished else None,
                finish_s=arrival + ttft + 0.02 * (output - 1) if finished else None,
                instances=(i % 4,) if i % 5 else (i % 4, (i + 1) % 4),
                migrations=0 if i % 5 else 1,
                preemptions=0,
            )
        )
    return records


class RecordingCluster:
    """A ClusterView that records every migration asked of it, (request id, source, destination),
    and passes it on."""

    def __init__(self, inner: ClusterView) -> None:
        self.inner = inner
        self.calls: list[tuple[int, int, int]] = []

    @property
    def num_instances(self) -> int:
        return self.inner.num_instances

    def instance(self, instance_id: int) -> InstanceView:
        return self.inner.instance(instance_id)

    def migrate(self, seq: Seq, src: int, dst: int, reason: str) -> bool:
        self.calls.append((seq.request_id, src, dst))
        return self.inner.migrate(seq, src, dst, reason)


def policy_context(
    profile: Profile,
    num_instances: int,
    *,
    workload: WorkloadSummary | None = None,
    migration: MigrationConfig | None = None,
    static_plan: StaticPlan | None = None,
    offload: Offload | None = None,
) -> PolicyContext:
    """What a policy is built with: ``profile``'s cost model and default instance, seed 0."""
    return PolicyContext(
        num_instances=num_instances,
        profile=profile,
        cost=StepCostModel(profile),
        instance_config=InstanceConfig.from_profile(profile),
        seed=0,
        workload=workload,
        migration=MigrationConfig() if migration is None else migration,
        static_plan=static_plan,
        offload=offload,
    )
