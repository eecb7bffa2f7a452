"""Fidelity: a trace replayed through `l4 engine` over a socket agrees with `l4.sim`.

The engine's own latency metrics (vLLM's, measured when the step loop hands tokens over) must
give TTFT, TPOT and E2E means within 10% of the simulator's; so must the client's TPOT and E2E.
The client's TTFT also carries the HTTP path (request parsing, the first SSE chunk) multiplied
by the time scale, so it is only checked to be no shorter than the engine's.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engine.sockets import serving_engine
from l4.core.migration import MigrationConfig
from l4.costmodel.profile import load_profile
from l4.engine.replay import ReplayConfig, replay
from l4.engine.server import EngineConfig
from l4.instance import InstanceConfig
from l4.metrics import RequestRecord, SloConfig, latency_samples
from l4.sim.runner import SimConfig, run_policy
from l4.workload import WorkloadSpec, build_workload

PROFILE = load_profile("rtxpro6000-llama-3.1-8b")
ICFG = InstanceConfig.from_profile(PROFILE)
TIME_SCALE = 3.0


def means(records: tuple[RequestRecord, ...]) -> list[float]:
    return [float(np.mean(x)) for x in latency_samples(records)]


def test_engine_and_simulator_agree_on_a_short_trace() -> None:
    workload = build_workload(
        WorkloadSpec(
            trace="azure-conv",
            max_context_tokens=PROFILE.model.max_context_tokens,
            num_requests=16,
            rate_scale=4.0,
        )
    )
    sim_cfg = SimConfig(profile=PROFILE, instance_config=ICFG, num_instances=1,
                        migration=MigrationConfig(), slo=SloConfig(), seed=0)  # fmt: skip
    sim = means(run_policy(sim_cfg, workload, "round_robin").outcome.records)
    config = EngineConfig(profile=PROFILE, instance_config=ICFG, served_model_name="m",
                          time_scale=TIME_SCALE)  # fmt: skip

    async def main() -> tuple[tuple[RequestRecord, ...], list[float]]:
        async with serving_engine(config) as (url, server):
            records = await replay(
                workload.requests, ReplayConfig(base_url=url, time_scale=TIME_SCALE)
            )
            registry = server.engine.metrics.registry
            labels = {"model_name": "m", "engine": "0"}
            served = []
            for name in (
                "vllm:time_to_first_token_seconds",
                "vllm:request_time_per_output_token_seconds",
                "vllm:e2e_request_latency_seconds",
            ):
                total = registry.get_sample_value(f"{name}_sum", labels)
                count = registry.get_sample_value(f"{name}_count", labels)
                assert total is not None and count == len(workload.requests)
                served.append(total / count)
            return records, served

    records, served = asyncio.run(main())
    assert all(r.finish_s is not None and r.generated_tokens == r.output_tokens for r in records)
    client = means(records)
    assert served == pytest.approx(sim, rel=0.10)
    assert client[1:] == pytest.approx(sim[1:], rel=0.10)
    assert client[0] >= served[0] * 0.99
