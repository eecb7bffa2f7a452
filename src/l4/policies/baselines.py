"""Length-agnostic baselines: what gateways in front of vLLM do today.

* `round_robin`  the default of most gateways (vLLM production-stack).
* `random`       uniform choice, seeded.
* `least_load`   vLLM's data-parallel balancer: fewest 4 x waiting + running, ties to the lowest id.

Each skips instances out of service (`InstanceView.available`; always true in the simulator).
"""

from __future__ import annotations

import random

from l4.policies.base import available, least_loaded, one_group, register_policy
from l4.request import RequestSpec
from l4.views import ClusterView, PolicyContext


class RoundRobin:
    tick_interval_s: float | None = None

    def __init__(self, ctx: PolicyContext) -> None:
        self._n = ctx.num_instances
        self._next = 0

    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int:
        for _ in range(self._n):
            i = self._next
            self._next = (i + 1) % self._n
            if cluster.instance(i).available:
                return i
        return self._next  # none in service: the caller has nowhere to send it anyway

    def on_tick(self, cluster: ClusterView, now_s: float) -> None:
        pass

    def groups(self) -> list[list[int]]:
        return one_group(self._n)


class RandomChoice:
    tick_interval_s: float | None = None

    def __init__(self, ctx: PolicyContext) -> None:
        self._n = ctx.num_instances
        self._rng = random.Random(ctx.seed)

    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int:
        up = available(cluster, range(self._n))
        return up[self._rng.randrange(len(up))] if up else self._rng.randrange(self._n)

    def on_tick(self, cluster: ClusterView, now_s: float) -> None:
        pass

    def groups(self) -> list[list[int]]:
        return one_group(self._n)


class LeastLoad:
    """vLLM DP load balancing (`score = 4 * waiting + running`)."""

    tick_interval_s: float | None = None

    def __init__(self, ctx: PolicyContext) -> None:
        self._n = ctx.num_instances

    def route(self, request: RequestSpec, cluster: ClusterView, now_s: float) -> int:
        return least_loaded(cluster, available(cluster, range(self._n)) or range(self._n))

    def on_tick(self, cluster: ClusterView, now_s: float) -> None:
        pass

    def groups(self) -> list[list[int]]:
        return one_group(self._n)


register_policy("round_robin")(RoundRobin)
register_policy("random")(RandomChoice)
register_policy("least_load")(LeastLoad)
