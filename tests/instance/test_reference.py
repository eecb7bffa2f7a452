"""The instance against a naive reference scheduler written from vLLM v1's rules, step by step.

``Reference`` keeps every counter explicitly (no offsets, no heaps, no closed form) and recomputes
every aggregate from scratch each step, so it shares no code with ``l4.instance`` beyond the cost
model. The rules it follows, as the instance module states them: decodes first, one token each;
when their new blocks do not fit, the latest-admitted running request is preempted (recompute);
then unfinished prefills in admission order and FCFS admissions under the token budget and
``max_num_seqs``, chunks taking blocks for their tokens; a prefill that does not fit preempts the
latest-admitted running request (a decode among them gives back the block it would have taken);
no admission in a step that preempted.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from factories import make_instance, req, tiny_profile
from l4.costmodel import PrefillChunk, StepCostModel
from l4.instance import Sequence
from l4.metrics import ItlRecorder

BS = 16


@dataclass
class Req:
    rid: int
    prompt: int
    output: int
    generated: int = 0
    computed: int = 0  # tokens in KV
    blocks: int = 0
    target: int = 0  # tokens to hold before the next token is emitted
    state: str = "waiting"
    first_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0


@dataclass
class Reference:
    num_blocks: int
    budget: int
    max_seqs: int
    cost: StepCostModel
    waiting: list[Req] = field(default_factory=list)
    running: list[Req] = field(default_factory=list)  # admission order

    def used(self) -> int:
        return sum(r.blocks for r in self.running)

    def preempt(self, r: Req) -> int:
        self.running.remove(r)
        freed, r.blocks = r.blocks, 0
        r.state, r.computed, r.target = "waiting", 0, r.prompt + r.generated
        r.preemptions += 1
        self.waiting.insert(0, r)
        return freed

    def step(self, now: float) -> float | None:
        """Run one step from ``now``; its end, or None when idle."""
        decodes = [r for r in self.running if r.state == "decode"]
        preempted = False
        while True:
            decodes = [r for r in self.running if r.state == "decode"]
            need = sum(1 for r in decodes if r.computed % BS == 0)
            if not decodes or need <= self.num_blocks - self.used():
                break
            self.preempt(self.running[-1])
            preempted = True
        free = self.num_blocks - self.used() - sum(1 for r in decodes if r.computed % BS == 0)
        budget = self.budget - len(decodes)
        chunks: list[tuple[Req, int]] = []
        for r in [r for r in self.running if r.state == "prefill"]:
            if budget <= 0:
                break
            if r.state != "prefill":
                continue
            c = min(r.target - r.computed, budget)
            extra = math.ceil((r.computed + c) / BS) - r.blocks
            while extra > free and r.state == "prefill":
                victim = self.running[-1]
                gives_back = victim.state == "decode" and victim.computed % BS == 0
                free += self.preempt(victim) + int(gives_back)
                preempted = True
            if r.state != "prefill":
                continue
            free -= extra
            r.blocks += extra
            budget -= c
            chunks.append((r, c))
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
                r = self.waiting[0]
                c = min(r.target, budget)
                if math.ceil(c / BS) > free:
                    break
                self.waiting.pop(0)
                free -= math.ceil(c / BS)
                r.blocks, r.state = math.ceil(c / BS), "prefill"
                self.running.append(r)
                budget -= c
                chunks.append((r, c))
        decodes = [r for r in self.running if r.state == "decode"]
        if not decodes and not chunks:
            return None
        contexts = [r.computed + 1 for r in decodes]
        end = now + self.cost.step_time_s(
            num_decodes=len(decodes),
            context_sum_tokens=sum(contexts),
            context_max_tokens=max(contexts, default=0),
            chunks=tuple(PrefillChunk(tokens=c, prior_tokens=r.computed) for r, c in chunks),
        )
        for r in decodes:
            r.computed += 1
            r.blocks = math.ceil(r.computed / BS)
            r.generated += 1
        for r, c in chunks:
            r.computed += c
            if r.computed < r.target:
                continue
            r.generated += 1
            r.first_s = end if r.first_s is None else r.first_s
            r.state = "decode"
        for r in list(self.running):
            if r.state == "decode" and r.generated >= r.output:
                self.running.remove(r)
                r.blocks, r.state, r.finish_s = 0, "finished", end
        return end


def _reference(
    specs: list[tuple[int, int]],
    num_blocks: int,
    max_seqs: int,
    arrivals: list[float] | None = None,
) -> list[Req]:
    """Serve ``specs`` (arriving at ``arrivals``, default all at 0) one step at a time."""
    profile = tiny_profile(kv_capacity_tokens=4096, max_context_tokens=1024)
    ref = Reference(num_blocks, 256, max_seqs, StepCostModel(profile))
    reqs = [Req(i, p, o, target=p) for i, (p, o) in enumerate(specs)]
    times = arrivals or [0.0] * len(reqs)
    pending = list(zip(times, reqs, strict=True))
    now = 0.0
    while True:
        while pending and pending[0][0] <= now:  # arrivals join at step boundaries
            ref.waiting.append(pending.pop(0)[1])
        end = ref.step(now)
        if end is None:
            if not pending:
                return reqs
            now = pending[0][0]  # idle until the next arrival
            continue
        now = end


requests = st.lists(st.tuples(st.integers(1, 300), st.integers(1, 120)), min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(requests, st.integers(20, 64), st.integers(1, 6), st.booleans())
def test_instance_equals_the_reference_scheduler(
    specs: list[tuple[int, int]], num_blocks: int, max_seqs: int, closed_form: bool
) -> None:
    # Every request must fit the cache alone: vLLM refuses longer ones up front.
    specs = [(p, o) for p, o in specs if math.ceil((p + o) / BS) <= num_blocks]
    if not specs:
        return
    expected = _reference(specs, num_blocks, max_seqs)
    profile = tiny_profile(kv_capacity_tokens=4096, max_context_tokens=1024)
    itl = ItlRecorder()
    inst = make_instance(profile, num_kv_blocks=num_blocks, max_num_seqs=max_seqs)
    inst._sink = itl
    seqs = [Sequence(req(i, p, o)) for i, (p, o) in enumerate(specs)]
    for s in seqs:
        inst.admit(s)
    now = 0.0
    while (plan := inst.plan(now, (1 << 62) if closed_form else 1)) is not None:
        now = plan.end_s
        inst.complete(now)
        assert inst.free_blocks() >= 0
    for s, r in zip(seqs, expected, strict=True):
        assert s.generated_tokens == r.generated == r.output
        assert s.preemptions == r.preemptions
        assert s.first_token_s is not None and r.first_s is not None
        assert math.isclose(s.first_token_s, r.first_s, rel_tol=1e-9, abs_tol=1e-12)
        assert s.finish_s is not None and r.finish_s is not None
        assert math.isclose(s.finish_s, r.finish_s, rel_tol=1e-9, abs_tol=1e-12)
    assert inst.num_preemptions == sum(r.preemptions for r in expected)
    assert inst.output_tokens == sum(r.output for r in expected)
    _, weights = itl.samples()
    assert int(weights.sum()) == sum(r.output - 1 for r in expected)  # one gap per later token
    assert inst.released_tokens == sum(r.prompt + r.output for r in expected)
    assert not inst.has_work and inst.used_blocks() == 0


@settings(max_examples=60, deadline=None)
@given(requests, st.integers(20, 64), st.data())
def test_arrivals_during_closed_form_plans_truncate_them_exactly(
    specs: list[tuple[int, int]], num_blocks: int, data: st.DataObject
) -> None:
    specs = [(p, o) for p, o in specs if math.ceil((p + o) / BS) <= num_blocks]
    if not specs:
        return
    gaps = data.draw(st.lists(st.floats(0.0, 0.05), min_size=len(specs), max_size=len(specs)))
    arrivals = list(itertools.accumulate(gaps))
    expected = _reference(specs, num_blocks, 4, arrivals)
    inst = make_instance(tiny_profile(kv_capacity_tokens=4096, max_context_tokens=1024),
                         num_kv_blocks=num_blocks, max_num_seqs=4)  # fmt: skip
    seqs = [Sequence(req(i, p, o, arrivals[i])) for i, (p, o) in enumerate(specs)]
    pending = list(seqs)
    now = 0.0
    while True:
        while pending and pending[0].spec.arrival_s <= now:
            inst.admit(pending.pop(0))
        plan = inst.plan(now)
        if plan is None:
            if not pending:
                break
            now = pending[0].spec.arrival_s
            continue
        end = plan.end_s
        if pending and pending[0].spec.arrival_s < end:
            truncated = inst.truncate(pending[0].spec.arrival_s)
            assert truncated is not None
            end = truncated
        inst.complete(end)
        now = end
    for s, r in zip(seqs, expected, strict=True):
        assert s.preemptions == r.preemptions
        assert s.first_token_s is not None and r.first_s is not None
        assert math.isclose(s.first_token_s, r.first_s, rel_tol=1e-9, abs_tol=1e-12)
        assert s.finish_s is not None and r.finish_s is not None
        assert math.isclose(s.finish_s, r.finish_s, rel_tol=1e-9, abs_tol=1e-12)


def test_the_reference_preempts_on_these_shapes() -> None:
    """The property above covers preemption: this shape (two requests outgrowing half of 20
    blocks) preempts in the reference and in the instance alike."""
    expected = _reference([(100, 120), (100, 120)], 20, 4)
    assert [r.preemptions for r in expected] == [0, 1]
    inst = make_instance(tiny_profile(kv_capacity_tokens=4096, max_context_tokens=1024),
                         num_kv_blocks=20, max_num_seqs=4)  # fmt: skip
    seqs = [Sequence(req(i, 100, 120)) for i in range(2)]
    for s in seqs:
        inst.admit(s)
    now = 0.0
    while (plan := inst.plan(now)) is not None:
        now = plan.end_s
        inst.complete(now)
    assert [s.preemptions for s in seqs] == [0, 1]
    assert seqs[1].finish_s == expected[1].finish_s or math.isclose(
        seqs[1].finish_s or 0.0, expected[1].finish_s or 0.0, rel_tol=1e-9
    )
