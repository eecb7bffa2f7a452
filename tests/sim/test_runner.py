"""run_policy: a burst (every request at one instant, vllm bench's rate inf) has no arrival rate;
the simulation's first policy tick falls at its tick phase after the first arrival."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factories import req, tiny_profile
from l4.core.migration import MigrationConfig
from l4.costmodel import load_profile
from l4.errors import ValidationError
from l4.instance import InstanceConfig
from l4.metrics import SloConfig
from l4.request import RequestSpec
from l4.sim.cluster import Simulation
from l4.sim.runner import SimConfig, run_policy
from l4.views import ClusterView
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


class _TickLog:
    """Routes everything to instance 0 and notes when it is ticked."""

    tick_interval_s: float | None = 0.2

    def __init__(self) -> None:
        self.ticks: list[float] = []

    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int:
        return 0

    def on_tick(self, cluster: ClusterView, now_s: float) -> None:
        self.ticks.append(now_s)

    def groups(self) -> list[list[int]]:
        return [[0]]


@pytest.mark.parametrize(("phase", "first_s"), [(1.0, 1.2), (0.25, 1.05)])
def test_the_first_tick_falls_at_the_tick_phase_after_the_first_arrival(
    phase: float, first_s: float
) -> None:
    profile = tiny_profile()
    policy = _TickLog()
    sim = Simulation(
        profile=profile,
        instance_config=InstanceConfig.from_profile(profile),
        num_instances=1,
        policy=policy,
        tick_phase=phase,
    )
    sim.run([req(0, 8, 4, 1.0), req(1, 8, 4, 2.0)])  # ticks run until both finish
    assert policy.ticks[0] == pytest.approx(first_s)
    assert policy.ticks[1] - policy.ticks[0] == pytest.approx(0.2)


@pytest.mark.parametrize("phase", [0.0, -0.5, 1.5])
def test_a_tick_phase_outside_one_tick_is_refused(phase: float) -> None:
    profile = tiny_profile()
    with pytest.raises(ValidationError, match="tick phase"):
        Simulation(
            profile=profile,
            instance_config=InstanceConfig.from_profile(profile),
            num_instances=1,
            policy=_TickLog(),
            tick_phase=phase,
        )
