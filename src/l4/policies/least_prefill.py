"""`least_prefill`: route to the instance with the least pending prefill work, memory permitting.

What production routers that look inside the engines do. Mooncake's Conductor sends a request to
the prefill instance with the smallest estimated TTFT (queued prefill time plus its own); Dynamo's
KV router scores a worker by the prefill blocks it would still have to compute plus its active
decode blocks; llm-d's queue and latency scorers rank pods by waiting work. Without prefix
caching, all three reduce to the same term: how many prompt tokens an instance still has to
prefill before it reaches the newcomer. That term is `InstanceView.pending_prefill()`: queued
prompts and the unfinished chunks of prompts already running (a 100K-token prompt half done is
most of an instance's near future, which a request count misses).

The rule, per arrival:

1. **Memory guard.** Candidates are the instances whose KV cache can hold the prompt after what
   their queue already claims: ``free_blocks - waiting_demand_blocks >= blocks(prompt + 1)``.
   Without it the router keeps feeding an instance whose memory is full of long decodes just
   because its prefill queue is empty, and that instance preempts (the collapse `least_load`
   shows when memory is scarce, docs/baselines.md).
2. Among the candidates, the fewest pending prefill tokens; ties (idle instances) go to the fewest
   running requests, then to the lowest id.
3. When no instance passes the guard, the instance with the most KV room left after its queue
   (Llumnix's freeness without the per-request division): it will admit the prompt first.

Instances out of service (`InstanceView.available`; always in service in the simulator) are
skipped. No migration. Guarantees: the choice is a pure function of the instances' state
(deterministic).
"""

from __future__ import annotations

from l4.policies.base import available, one_group, register_policy
from l4.request import RequestSpec
from l4.views import ClusterView, InstanceView, PolicyContext


def room_blocks(inst: InstanceView) -> int:
    """KV blocks left once the instance's queued prompts are admitted (may be negative)."""
    return inst.free_blocks() - inst.waiting_demand_blocks()


def pending_prefill_tokens(inst: InstanceView) -> int:
    return inst.pending_prefill()[0]


def least_prefill_choice(cluster: ClusterView, members: list[int], prompt_blocks: int) -> int:
    """The instance of ``members`` that the rule above picks for a prompt of ``prompt_blocks``
    (among those in service, or all of them when none is)."""
    best: tuple[int, int, int] | None = None
    fallback: tuple[int, int] | None = None
    for i in available(cluster, members) or members:
        inst = cluster.instance(i)
        room = room_blocks(inst)
        if room >= prompt_blocks:
            key = (pending_prefill_tokens(inst), inst.num_running, i)
            if best is None or key < best:
                best = key
        elif fallback is None or (-room, i) < fallback:
            fallback = (-room, i)
    if best is not None:
        return best[2]
    assert fallback is not None  # members is never empty
    return fallback[1]


class LeastPrefill:
    tick_interval_s: float | None = None

    def __init__(self, ctx: PolicyContext) -> None:
        self._n = ctx.num_instances
        self._members = list(range(self._n))
        self._bs = ctx.instance_config.block_size_tokens

    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int:
        blocks = -(-(request.input_tokens + 1) // self._bs)
        return least_prefill_choice(cluster, self._members, blocks)

    def on_tick(self, cluster: ClusterView, now_s: float) -> None:
        pass

    def groups(self) -> list[list[int]]:
        return one_group(self._n)


register_policy("least_prefill")(LeastPrefill)
