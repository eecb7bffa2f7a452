"""run_policy: a burst (every request at one instant, vllm bench's rate inf) has no arrival rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.instance import InstanceConfig
from l4.metrics import SloConfig
from l4.sim.runner import SimConfig, run_policy
from l4.workload import WorkloadSpec, build_workload


@pytest.mark.parametrize("policy", ["round_robin", "l4", "length_buckets"])
def test_a_burst_runs_with_policies_starting_cold(tmp_path: Path, policy: str) -> None:
    path = tmp_path / "burst.jsonl"
    rows = [{"arrival_s": 0.0, "input_tokens": 50 + 40 * i, "output_tokens": 8} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    profile = load_profile("h100-llama-3.2-3b")
    workload = build_workload(
        WorkloadSpec(trace=str(path), max_context_tokens=profile.model.max_context_tokens)
    )
    assert workload.mean_rate_rps == 0  # what made the summary, and the run, fail
    cfg = SimConfig(
        profile=profile,
        instance_config=InstanceConfig.from_profile(profile),
        num_instances=2,
        migration=MigrationConfig(),
        slo=SloConfig(),
        seed=0,
    )
    run = run_policy(cfg, workload, policy)
    assert run.summary["completed"] == 6 and run.summary["unfinished"] == 0
