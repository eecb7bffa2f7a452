"""Instances leaving and rejoining service: L4 re-plans over the ones that serve.

The cluster here is the gateway's own live view (`l4.gateway.book`), with engines marked out of
service by hand: the runtime sees exactly what it sees behind `l4 serve`, with no network.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from factories import policy_context, req, tiny_profile
from l4.agents.config import L4Config
from l4.agents.leaders import length_report
from l4.agents.membership import Membership
from l4.agents.planning import plan_for
from l4.agents.runtime import L4Runtime
from l4.agents.stages import StageTable, reassign, split_in_proportion
from l4.core.grid import exponential_grid
from l4.core.summary import summarize_requests, summary_from_counts
from l4.gateway.book import LiveCluster, LiveInstance
from l4.offload import Inline
from l4.views import PolicyContext, StaticPlan

PROFILE = tiny_profile(kv_capacity_tokens=8192, max_context_tokens=2048)


def ctx(n: int, **kw: Any) -> PolicyContext:
    return policy_context(PROFILE, n, **kw)


def live(n: int) -> LiveCluster:
    return LiveCluster(
        [
            LiveInstance(
                i,
                num_kv_blocks=512,
                block_size_tokens=16,
                max_num_batched_tokens=2048,
                max_num_seqs=256,
            )
            for i in range(n)
        ],
        clock=lambda: 0.0,
    )


def test_pinned_ranges_keep_their_boundaries_over_fewer_instances() -> None:
    plan = StaticPlan(boundaries_tokens=(300,), stage_sizes=(2, 2))
    rt = L4Runtime(ctx(4, static_plan=plan), L4Config())
    cluster = live(4)
    rt.on_tick(cluster, 0.0)
    assert rt.groups() == [[0, 1], [2, 3]]
    cluster.instances[2].healthy = False
    rt.on_tick(cluster, 0.2)
    assert rt.table.out == frozenset({2}) and rt.table.boundaries_tokens == (300,)
    # 3 instances in proportion 2:2 -> 2 and 1 (largest remainder, ties to the earlier stage).
    assert rt.groups() == [[0, 1], [3]]
    cluster.instances[3].healthy = False
    cluster.instances[1].healthy = False
    rt.on_tick(cluster, 0.4)
    assert rt.table.boundaries_tokens == () and rt.groups() == [[0]]  # one left: one stage
    for i in (1, 2, 3):
        cluster.instances[i].healthy = True
    rt.on_tick(cluster, 0.6)
    assert rt.table.out == frozenset() and rt.groups() == [[0, 1], [2, 3]]
    assert rt.stats()["membership_changes"] == 3 and rt.stats()["replans"] == 0


def test_pinned_ranges_stay_pinned_when_there_is_a_workload_to_plan_from() -> None:
    # The DP would place its own boundary for this workload; pinned ranges are the operator's.
    grid = exponential_grid(2048, min_tokens=32)
    specs = [req(i, 40 if i % 2 else 900, 200, arrival_s=i * 0.01) for i in range(400)]
    workload = summarize_requests(grid, specs, duration_s=4.0)
    plan = StaticPlan(boundaries_tokens=(300,), stage_sizes=(2, 2))
    rt = L4Runtime(ctx(4, static_plan=plan, workload=workload), L4Config())
    cluster = live(4)
    rt.on_tick(cluster, 0.0)
    cluster.instances[0].healthy = False
    rt.on_tick(cluster, 0.2)
    assert rt.table.boundaries_tokens == (300,) and rt.groups() == [[1, 2], [3]]


def test_with_every_instance_out_the_table_stays_for_when_one_comes_back() -> None:
    plan = StaticPlan(boundaries_tokens=(300,), stage_sizes=(1, 1))
    rt = L4Runtime(ctx(2, static_plan=plan), L4Config())
    cluster = live(2)
    rt.on_tick(cluster, 0.0)
    before = rt.table
    for inst in cluster.instances:
        inst.healthy = False
    rt.on_tick(cluster, 0.2)
    assert rt.table == before and rt.membership_changes == 0
    cluster.instances[1].healthy = True
    rt.on_tick(cluster, 0.4)
    assert rt.table.out == frozenset({0}) and rt.groups() == [[1]]
    assert rt.membership_changes == 1


def test_every_agent_follows_the_new_table_and_the_front_door_avoids_the_failed_one() -> None:
    rt = L4Runtime(ctx(3), L4Config(staged=False, refine=False, replan=False))
    cluster = live(3)
    cluster.instances[0].healthy = False
    rt.on_tick(cluster, 0.0)
    assert all(a.table.out == frozenset({0}) for a in rt.agents)
    for k in range(6):
        assert rt.route(req(k, 50, 10), cluster, 0.1) in (1, 2)


def test_a_planned_cluster_replans_for_the_serving_instances() -> None:
    grid = exponential_grid(2048, min_tokens=32)
    specs = [req(i, 40 if i % 2 else 900, 200, arrival_s=i * 0.01) for i in range(400)]
    workload = summarize_requests(grid, specs, duration_s=4.0)
    rt = L4Runtime(ctx(4, workload=workload), L4Config(stage_margin=0.0))
    cluster = live(4)
    rt.on_tick(cluster, 0.0)
    before = rt.table
    assert before.num_stages == 3
    cluster.instances[1].healthy = False
    rt.on_tick(cluster, 0.2)
    after = rt.table
    assert after.out == frozenset({1}) and after.version == before.version + 1
    # No report yet: the DP re-plans the three serving instances on the expected workload.
    boundaries, sizes = plan_for(workload, rt.model, 3, 0.0)
    assert after.boundaries_tokens == boundaries and boundaries == (256,)
    assert [len(g) for g in rt.groups()] == list(sizes) == [1, 2]
    assert rt.groups() == [[0], [2, 3]]


def test_reports_of_idle_windows_give_way_to_the_expected_workload() -> None:
    # The coordinator holds a report from everyone, but they saw no decoding (an idle minute):
    # the serving instances are re-planned on the expected workload, not on nothing.
    workload = _bimodal_workload()
    rt = L4Runtime(ctx(4, workload=workload), L4Config(stage_margin=0.0))
    cluster = live(4)
    rt.on_tick(cluster, 0.0)
    # What an observer closes after a window with nothing in it.
    idle = summary_from_counts(workload.grid, duration_s=2.0, prompts=[], starts=[], ends=[])
    for i in range(4):
        stage = rt.table.stage_of_instance[i]
        rt.agents[0].reports[i] = length_report(
            idle, sender=i, stage=stage, requests_seen=0, now_s=0.0
        )
    cluster.instances[1].healthy = False
    rt.on_tick(cluster, 0.2)
    assert rt.table.boundaries_tokens == plan_for(workload, rt.model, 3, 0.0)[0] == (256,)


def test_reassign_deals_only_serving_instances_and_caps_the_others() -> None:
    table = StageTable(boundaries_tokens=(100, 1000), stage_of_instance=(0, 1, 2, 2))
    assert reassign(table, [1, 2], frozenset({3})) == (0, 1, 1, 1)
    assert reassign(table, [3], frozenset({1})) == (0, 0, 0, 0)
    assert split_in_proportion(3, [2, 2]) == (2, 1)
    assert split_in_proportion(7, [1, 3]) == (2, 5)


class Unsolved:
    """A solver that never finishes: what is published before the DP's plan arrives."""

    def submit(self, fn: Any, /) -> Future[Any]:
        return Future()


def _bimodal_workload() -> Any:
    grid = exponential_grid(2048, min_tokens=32)
    specs = [req(i, 40 if i % 2 else 900, 200, arrival_s=i * 0.01) for i in range(400)]
    return summarize_requests(grid, specs, duration_s=4.0)


def _applied(update: Any) -> StageTable:
    return StageTable(
        boundaries_tokens=update.boundaries_tokens,
        stage_of_instance=update.stage_of_instance,
        version=update.version,
        out=update.out,
    )


def _membership(offload: Any, n: int, **kw: Any) -> Membership:
    model = L4Runtime(ctx(n), L4Config()).model
    args: dict[str, Any] = {"static_plan": None, "staged": True, "stage_margin": 0.0, **kw}
    return Membership(num_instances=n, model=model, offload=offload, **args)


def test_while_the_dp_solves_the_ranges_are_shared_in_proportion_to_the_stages_sizes() -> None:
    # Stages of 1, 4 and 1 instances; the last one's instance leaves: five serve, 1:4:1 gives
    # 1, 3 and 1 (an even share would be 2, 2, 1).
    m = _membership(Unsolved(), 6)
    table = StageTable(boundaries_tokens=(100, 1000), stage_of_instance=(0, 1, 1, 1, 1, 2))
    update = m.change(table, frozenset({5}), _bimodal_workload)
    assert update is not None and update.boundaries_tokens == (100, 1000)
    serving = [s for i, s in enumerate(update.stage_of_instance) if i != 5]
    assert [serving.count(k) for k in range(3)] == [1, 3, 1]
    assert m.solved(_applied(update)) is None  # still being solved
    assert m.change(table, frozenset({5}), _bimodal_workload) is not None
    assert m.change(_applied(update), update.out, _bimodal_workload) is None


def test_an_unstaged_runtime_stays_one_stage_whatever_ranges_were_given() -> None:
    pinned = StaticPlan(boundaries_tokens=(300,), stage_sizes=(1, 2))
    m = _membership(Inline(), 3, static_plan=pinned, staged=False)
    update = m.change(StageTable.single(3), frozenset({0}), _bimodal_workload)
    assert update is not None and update.boundaries_tokens == ()
    assert update.stage_of_instance[1:] == (0, 0)
