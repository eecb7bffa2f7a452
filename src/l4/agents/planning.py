"""A refinement round, and the re-plan that may come with it, as one pure job.

The runtime gathers a round's inputs where they live (the reports of this round, the tables the
leaders hold, the lengths of the running requests a new plan would hand off) into a frozen,
picklable ``PlanningRound``; ``solve_round`` computes from them alone the boundary moves the
leaders send and the coordinator's proposal, so the work runs wherever the runtime's ``Offload``
puts it (``l4.offload``): inline in the simulator, off the event loop in the gateway.

Boundaries are solved in stage order, each against its leader's table with the round's earlier
moves applied, as the leader holds it once they are delivered; the re-plan is solved on the
coordinator's table after them. Every message carries the table version it was solved against,
so a result overtaken by a change of plan or membership is refused by its receivers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from l4.agents.leaders import boundary_target, propose_plan, stage_indices
from l4.agents.messages import BoundaryMove, PlanUpdate
from l4.agents.refinement import BoundaryRule, RefinementConfig
from l4.agents.stages import StageTable
from l4.core.choice import plan_with_margin
from l4.core.qoe import StageModel
from l4.core.summary import WorkloadSummary

# (boundaries, instances per stage): a plan as a change of membership publishes it.
StagePlan = tuple[tuple[int, ...], tuple[int, ...]]
# A typical decode step, at which hand-offs are priced: the migration model's stall is not
# sensitive to it.
_DRAIN_STEP_S = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class BoundaryInput:
    index: int  # boundary k, between stages k-1 and k
    leader: int  # who solves it: the leader of stage k-1
    table: StageTable  # the leader's table as the round began
    summary: WorkloadSummary  # the two stages' reports of this round, combined
    requests_seen: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplanInput:
    coordinator: int
    table: StageTable  # the coordinator's table as the round began
    summary: WorkloadSummary  # everyone's reports of this round, combined
    # Context lengths of each instance's running requests: what a new assignment hands off.
    running_tokens: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanningRound:
    model: StageModel
    rule: BoundaryRule
    refinement: RefinementConfig
    boundaries: tuple[BoundaryInput, ...]
    replan: ReplanInput | None
    replan_min_gain: float
    replan_period_s: float
    stage_margin: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundResult:
    moves: tuple[BoundaryMove, ...]
    replanned: bool  # a re-plan was solved (its proposal may still be None: keep the plan)
    proposal: PlanUpdate | None


def solve_round(job: PlanningRound) -> RoundResult:
    moves: list[BoundaryMove] = []
    for b in job.boundaries:
        table = delivered(b.table, moves)
        grid = b.summary.grid
        target = boundary_target(
            b.summary,
            job.model,
            table,
            b.index,
            rule=job.rule,
            config=job.refinement,
            requests_seen=b.requests_seen,
        )
        if target is None or target == stage_indices(grid, table, b.index)[0]:
            continue
        moves.append(
            BoundaryMove(
                index=b.index,
                tokens=grid.edges_tokens[target],
                version=table.version,
                sender=b.leader,
            )
        )
    r = job.replan
    if r is None:
        return RoundResult(moves=tuple(moves), replanned=False, proposal=None)
    table = delivered(r.table, moves)
    proposal = propose_plan(
        r.summary,
        job.model,
        table,
        min_gain=job.replan_min_gain,
        sender=r.coordinator,
        stage_margin=job.stage_margin,
        drain_cost=lambda stage_of: drain_cost_s(
            job.model, table, r.running_tokens, stage_of, period_s=job.replan_period_s
        ),
    )
    return RoundResult(moves=tuple(moves), replanned=True, proposal=proposal)


def delivered(table: StageTable, moves: Sequence[BoundaryMove]) -> StageTable:
    """``table`` after ``moves``, applied as a receiver applies them (same version, order kept)."""
    for m in moves:
        if m.version == table.version:
            moved = table.with_move(m.index, m.tokens)
            table = moved if moved is not None else table
    return table


def drain_cost_s(
    model: StageModel,
    table: StageTable,
    running_tokens: Sequence[Sequence[int]],
    stage_of: tuple[int, ...],
    *,
    period_s: float,
) -> float:
    """Latency the hand-offs of a new assignment cost, per second of a re-plan period: every
    running request of an instance that changes stage migrates once (queued ones move without
    KV and cost nothing), priced by the planner's migration model."""
    lengths: list[int] = []
    for i, (old, new) in enumerate(zip(table.stage_of_instance, stage_of, strict=True)):
        if old != new:
            lengths.extend(running_tokens[i])
    if not lengths:
        return 0.0
    lost = model.migration_latency_s(lengths, tpot_s=_DRAIN_STEP_S, step_s=_DRAIN_STEP_S)
    return float(lost.sum()) / period_s


def plan_for(
    summary: WorkloadSummary, model: StageModel, serving: int, stage_margin: float
) -> StagePlan:
    """(boundaries, instances per stage) the DP gives ``serving`` instances: a change of
    membership's plan."""
    plan = plan_with_margin(summary, model, serving, margin=stage_margin)
    return plan.boundaries_tokens, tuple(s.num_instances for s in plan.stages)
