"""Run a policy over a workload and summarise it: the glue behind `l4 simulate` and `capacity`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from l4.core.grid import exponential_grid
from l4.core.migration import MigrationConfig
from l4.core.summary import summarize_workload
from l4.costmodel.profile import Profile
from l4.costmodel.step import StepCostModel
from l4.instance.config import InstanceConfig
from l4.metrics import RequestRecord, SloConfig, summarize
from l4.policies.base import StatsReporter, make_policy
from l4.sim.cluster import SimOutcome, Simulation
from l4.views import PolicyContext
from l4.workload import Workload


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    profile: Profile
    instance_config: InstanceConfig
    num_instances: int
    migration: MigrationConfig
    slo: SloConfig
    seed: int
    drain_s: float = 3600.0
    tick_phase: float = 1.0  # first policy tick, in ticks after the first arrival (Simulation)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRun:
    policy: str
    summary: dict[str, object]
    outcome: SimOutcome


def summarize_outcome(
    cfg: SimConfig, outcome: SimOutcome, records: Sequence[RequestRecord] | None = None
) -> dict[str, object]:
    """The metrics of a run (``l4.metrics.summarize``); latencies and SLOs over ``records`` (a
    subset, e.g. one length class) when given, counts and balance always over the whole run."""
    cost = StepCostModel(cfg.profile)
    budget = cfg.instance_config.max_num_batched_tokens

    @functools.cache
    def unloaded(input_tokens: int, output_tokens: int) -> tuple[float, float]:
        return cost.unloaded_latency_s(input_tokens, output_tokens, budget)

    chosen = outcome.records if records is None else records
    by_instance = outcome.output_tokens_by_instance
    summary = summarize(
        chosen,
        outcome.itl,
        slo=cfg.slo,
        unloaded=unloaded,
        output_tokens_by_group=[[by_instance[i] for i in g] for g in outcome.groups],
        migrations_by_reason=outcome.migrations_by_reason,
        preemptions=outcome.preemptions,
        sim_wall_s=outcome.wall_s,
    )
    # The TTFT the requests that got a first token would have had on an idle instance: what the
    # report compares mean TTFT with to tell queueing from prefill time.
    started = [
        unloaded(r.input_tokens, r.output_tokens)[0] for r in chosen if r.first_token_s is not None
    ]
    summary["unloaded_ttft_s"] = {"mean": float(np.mean(started)) if started else None}
    return summary


def run_policy(
    cfg: SimConfig,
    workload: Workload,
    policy: str,
    *,
    progress: Callable[[float], None] | None = None,
) -> PolicyRun:
    cost = StepCostModel(cfg.profile)
    grid = exponential_grid(cfg.profile.model.max_context_tokens)
    ctx = PolicyContext(
        num_instances=cfg.num_instances,
        profile=cfg.profile,
        cost=cost,
        instance_config=cfg.instance_config,
        seed=cfg.seed,
        # A workload arriving at one instant (a burst: vllm bench's rate inf) has no rate to plan
        # for; the policies then start cold, as they do without requests.
        workload=(
            summarize_workload(grid, workload)
            if workload.requests and workload.mean_rate_rps > 0
            else None
        ),
        migration=cfg.migration,
    )
    made = make_policy(policy, ctx)
    sim = Simulation(
        profile=cfg.profile,
        instance_config=cfg.instance_config,
        num_instances=cfg.num_instances,
        policy=made,
        migration=cfg.migration,
        cost=cost,
        tick_phase=cfg.tick_phase,
    )
    outcome = sim.run(workload.requests, drain_s=cfg.drain_s, progress=progress)
    summary = summarize_outcome(cfg, outcome)
    summary["events"] = outcome.events
    summary["failed_migrations"] = outcome.failed_migrations
    if isinstance(made, StatsReporter):
        summary["policy_stats"] = made.stats()
    return PolicyRun(policy=policy, summary=summary, outcome=outcome)
