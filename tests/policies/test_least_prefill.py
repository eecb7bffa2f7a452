"""least_prefill: fewest pending prefill tokens (unfinished chunks included), with a KV guard."""

from __future__ import annotations

from factories import req, tiny_profile
from l4.costmodel import StepCostModel
from l4.instance import InstanceConfig, SeqState
from l4.instance import Sequence as Seq
from l4.policies.base import make_policy
from l4.sim.cluster import Simulation
from l4.views import PolicyContext

_ids = iter(range(1000, 10**6))


def _setup(n: int, kv_tokens: int = 3072) -> tuple[PolicyContext, Simulation]:
    profile = tiny_profile(kv_capacity_tokens=kv_tokens, max_context_tokens=2048)
    ctx = PolicyContext(
        num_instances=n,
        profile=profile,
        cost=StepCostModel(profile),
        instance_config=InstanceConfig.from_profile(profile),  # 256-token chunks, 16-token blocks
        seed=0,
    )
    sim = Simulation(
        profile=profile,
        instance_config=ctx.instance_config,
        num_instances=n,
        policy=make_policy("round_robin", ctx),
        cost=ctx.cost,
    )
    return ctx, sim


def _queue(sim: Simulation, i: int, prompt: int, output: int = 50) -> Seq:
    seq = Seq(req(next(_ids), prompt, output))
    sim.instances[i].admit(seq)
    return seq


def _steps(sim: Simulation, i: int, k: int) -> None:
    inst, now = sim.instances[i], 0.0
    for _ in range(k):
        plan = inst.plan(now, max_steps=1)
        assert plan is not None
        now = plan.end_s
        inst.complete(now)


def _decode(sim: Simulation, i: int, prompts: list[int]) -> None:
    seqs = [_queue(sim, i, p, 500) for p in prompts]
    while any(s.state is not SeqState.DECODE for s in seqs):
        _steps(sim, i, 1)


def test_counts_unfinished_chunks_of_running_prompts() -> None:
    ctx, sim = _setup(3)
    big = _queue(sim, 0, 1000)
    _steps(sim, 0, 1)  # one 256-token chunk done: 744 tokens still to prefill, nothing queued
    assert big.state is SeqState.PREFILL and big.computed_tokens == 256
    _queue(sim, 1, 300)
    _queue(sim, 1, 300)  # 600 queued tokens
    _queue(sim, 2, 800)  # 800 queued tokens
    assert [sim.instance(i).pending_prefill()[0] for i in range(3)] == [744, 600, 800]
    assert make_policy("least_prefill", ctx).route(req(0, 100, 10), sim, 0.0) == 1
    # vLLM's balancer (4 x waiting + running: 1, 8, 4) sends it behind the 744 tokens.
    assert make_policy("least_load", ctx).route(req(0, 100, 10), sim, 0.0) == 0


def test_idle_prefill_ties_go_to_fewer_running_then_lowest_id() -> None:
    ctx, sim = _setup(3)
    _decode(sim, 0, [100, 100, 100])
    _decode(sim, 1, [100])
    _decode(sim, 2, [100])
    policy = make_policy("least_prefill", ctx)
    assert policy.route(req(0, 100, 10), sim, 0.0) == 1


def test_memory_guard_skips_an_instance_that_cannot_hold_the_prompt() -> None:
    ctx, sim = _setup(2)  # 192 blocks per instance
    _decode(sim, 0, [1400, 1400])  # 2 x 88 blocks held: 16 free, no prefill pending
    _queue(sim, 1, 500)  # 500 tokens pending, 160 blocks of room after them
    assert sim.instance(0).free_blocks() == 16
    policy = make_policy("least_prefill", ctx)
    # A 300-token prompt needs 19 blocks: instance 0 cannot admit it, instance 1 can.
    assert policy.route(req(0, 300, 10), sim, 0.0) == 1
    # A 100-token prompt (7 blocks) fits on instance 0, which has nothing to prefill.
    assert policy.route(req(1, 100, 10), sim, 0.0) == 0


def test_when_nothing_fits_the_most_room_wins() -> None:
    ctx, sim = _setup(3)
    _decode(sim, 0, [1400, 1400])  # 16 free blocks
    _decode(sim, 1, [1400, 1000])  # 88 + 63 = 151 held: 41 free
    _decode(sim, 2, [1400, 1200])  # 88 + 75 = 163 held: 29 free
    assert [sim.instance(i).free_blocks() for i in range(3)] == [16, 41, 29]
    policy = make_policy("least_prefill", ctx)
    assert policy.route(req(0, 1500, 10), sim, 0.0) == 1  # 94 blocks fit nowhere


class _Down:
    """An instance view that reports itself out of service."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    @property
    def available(self) -> bool:
        return False


class _Outage:
    """A cluster view with some instances out of service (as the gateway reports a failure)."""

    def __init__(self, inner: Simulation, down: set[int]) -> None:
        self.inner, self.down = inner, down

    @property
    def num_instances(self) -> int:
        return self.inner.num_instances

    def instance(self, instance_id: int) -> object:
        view = self.inner.instance(instance_id)
        return _Down(view) if instance_id in self.down else view

    def migrate(self, seq: Seq, src: int, dst: int, reason: str) -> bool:
        return self.inner.migrate(seq, src, dst, reason)


def test_instances_out_of_service_are_skipped() -> None:
    ctx, sim = _setup(3)
    _queue(sim, 0, 800)
    _queue(sim, 2, 300)  # instance 1 idle, instance 2 has the next least prefill
    policy = make_policy("least_prefill", ctx)
    assert policy.route(req(0, 100, 10), sim, 0.0) == 1
    assert policy.route(req(0, 100, 10), _Outage(sim, {1}), 0.0) == 2  # type: ignore[arg-type]
