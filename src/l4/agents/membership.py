"""Instances leaving and rejoining service: the stage table over the instances that serve.

Instances out of service (``InstanceView.available`` false: an engine the gateway took out) keep a
nominal stage but serve none. When the set out of service changes, the plan is recomputed for the
rest — by the DP from the coordinator's latest reports (else the expected workload), or, with
pinned ranges or one stage, the same ranges over fewer instances — and published like a re-plan,
so agents whose stage changed drain. The DP runs where the deployment's ``Offload`` puts it; until
it is solved (live: a tick or more), the ranges in force are kept over the instances that serve,
so the front door never waits for the solver to stop sending to an engine that is gone.

The runtime owns the bus: ``Membership`` only says which ``PlanUpdate`` to send and when.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from l4.agents.messages import FRONT, PlanUpdate
from l4.agents.planning import StagePlan, plan_for
from l4.agents.stages import StageTable, reassign, resize_stages
from l4.core.qoe import StageModel
from l4.core.summary import WorkloadSummary
from l4.offload import Offload
from l4.views import StaticPlan


class Membership:
    def __init__(
        self,
        *,
        num_instances: int,
        model: StageModel,
        offload: Offload,
        static_plan: StaticPlan | None,
        staged: bool,
        stage_margin: float,
    ) -> None:
        self._n = num_instances
        self._model = model
        self._offload = offload
        self._static_plan = static_plan
        # The DP plans a new membership only for a runtime that plans at all (staged, not pinned).
        self._planned = staged and static_plan is None
        self._staged = staged
        self._stage_margin = stage_margin
        # The DP's plan for the last change being solved, and the membership it is for.
        self._solving: tuple[Future[StagePlan], frozenset[int]] | None = None

    def solved(self, table: StageTable) -> PlanUpdate | None:
        """The DP's plan for the last change of membership, once solved (None until then, and
        after a later change, which drops it)."""
        pending, self._solving = self._solving, None
        if pending is None or not pending[0].done():
            self._solving = pending
            return None
        solving, out = pending
        return _update(table, solving.result(), out)

    def change(
        self,
        table: StageTable,
        out: frozenset[int],
        summary: Callable[[], WorkloadSummary | None],
    ) -> PlanUpdate | None:
        """The table for instances ``out`` of service; None when that is the set ``table`` has,
        or when nobody serves (the front door has nowhere to send: the table stays).

        ``summary`` is what the DP plans from, asked only when the DP runs."""
        if out == table.out or len(out) == self._n:
            return None
        self._solving = None  # a plan still being solved is for the old membership
        serving = self._n - len(out)
        workload = summary() if self._planned else None
        if workload is None:
            return _update(table, self._without_dp(serving), out)
        job = functools.partial(plan_for, workload, self._model, serving, self._stage_margin)
        solving = self._offload.submit(job)
        if solving.done():
            return _update(table, solving.result(), out)
        self._solving = (solving, out)
        sizes = [table.stage_of_instance.count(s) for s in range(table.num_stages)]
        return _update(table, _in_proportion(table.boundaries_tokens, sizes, serving), out)

    def _without_dp(self, serving: int) -> StagePlan:
        """Pinned ranges kept over ``serving`` instances, else one stage."""
        pinned = self._static_plan
        if pinned is None or not self._staged:
            return (), (serving,)
        return _in_proportion(pinned.boundaries_tokens, pinned.stage_sizes, serving)


def _in_proportion(boundaries: tuple[int, ...], sizes: Sequence[int], serving: int) -> StagePlan:
    """The first stages of ``boundaries`` over ``serving`` instances, sized in proportion."""
    stages = min(len(sizes), serving)
    return boundaries[: stages - 1], resize_stages(sizes[:stages], serving)


def _update(table: StageTable, plan: StagePlan, out: frozenset[int]) -> PlanUpdate:
    boundaries, counts = plan
    return PlanUpdate(
        version=table.version + 1,
        boundaries_tokens=boundaries,
        stage_of_instance=reassign(table, counts, out),
        sender=FRONT,
        out=out,
    )
