"""vLLM v1 scheduling semantics of one instance, driven by hand with an injected clock."""

from __future__ import annotations

import pytest

from factories import make_instance, req, tiny_profile
from l4.errors import InvariantError
from l4.instance import Instance, SeqState, Sequence
from l4.instance.engine import StepPlan, StepResult


def drive(inst: Instance, seqs: list[Sequence], *, max_steps: int = 1 << 62) -> list[StepResult]:
    """Run the instance until idle, admitting everything at t=0; return every step result."""
    for s in seqs:
        inst.admit(s)
    now = 0.0
    results = []
    while (plan := inst.plan(now, max_steps)) is not None:
        results.append(inst.complete(plan.end_s))
        now = plan.end_s
    return results


def test_single_request_prefills_in_chunks_then_decodes() -> None:
    inst = make_instance()  # budget 256 tokens per step
    seq = Sequence(req(0, 600, 5))
    inst.admit(seq)
    chunks = []
    now = 0.0
    while (plan := inst.plan(now, 1)) is not None:
        chunks.append([c for _, c in plan.chunks])
        inst.complete(plan.end_s)
        now = plan.end_s
    assert chunks[:3] == [[256], [256], [88]]
    assert chunks[3:] == [[]] * 4  # four decode steps after the prefill's token
    assert seq.state is SeqState.FINISHED
    assert seq.generated_tokens == 5
    assert seq.first_token_s is not None and seq.finish_s == pytest.approx(now)


def test_ttft_is_the_sum_of_prefill_steps() -> None:
    profile = tiny_profile()
    inst = make_instance(profile)
    seq = Sequence(req(0, 600, 3))
    drive(inst, [seq])
    ttft, _ = inst.cost.unloaded_latency_s(600, 3, 256)
    assert seq.first_token_s == pytest.approx(ttft)


def test_max_num_seqs_caps_the_batch() -> None:
    inst = make_instance(max_num_seqs=3)
    seqs = [Sequence(req(i, 10, 50)) for i in range(7)]
    for s in seqs:
        inst.admit(s)
    now = 0.0
    while (plan := inst.plan(now, 1)) is not None:
        assert inst.num_running <= 3
        inst.complete(plan.end_s)
        now = plan.end_s
    assert all(s.state is SeqState.FINISHED for s in seqs)
    # FCFS: earlier requests finish no later than later ones of the same shape.
    finishes = [s.finish_s for s in seqs]
    assert finishes == sorted(finishes)  # type: ignore[type-var]


def test_preemption_recomputes_the_latest_admitted_request() -> None:
    # 8 blocks of 16 tokens; two requests that each grow past half of the cache.
    inst = make_instance(num_kv_blocks=8)
    a, b = Sequence(req(0, 40, 60)), Sequence(req(1, 40, 60))
    drive(inst, [a, b], max_steps=1)
    assert a.preemptions == 0 and b.preemptions >= 1  # the later one is the victim
    assert a.generated_tokens == b.generated_tokens == 60
    assert inst.num_preemptions == a.preemptions + b.preemptions


def test_head_of_line_blocks_on_kv_without_skipping() -> None:
    inst = make_instance(num_kv_blocks=8)
    big = Sequence(req(0, 100, 12))  # at most 111 tokens: 7 blocks
    huge = Sequence(req(1, 120, 2))  # needs 8 blocks: must wait for big to finish
    small = Sequence(req(2, 5, 2))  # would fit, but FCFS never overtakes the head
    drive(inst, [big, huge, small])
    assert big.finish_s is not None and huge.first_token_s is not None
    assert huge.first_token_s > big.finish_s
    assert small.first_token_s is not None and small.first_token_s >= huge.first_token_s


def test_kv_usage_tracks_blocks() -> None:
    inst = make_instance()
    seq = Sequence(req(0, 64, 10))
    inst.admit(seq)
    plan = inst.plan(0.0, 1)
    assert plan is not None
    inst.complete(plan.end_s)
    assert inst.used_blocks() == 4
    assert inst.kv_usage == pytest.approx(4 / inst.config.num_kv_blocks)
    assert inst.length_of(seq) == 65


def test_truncate_keeps_only_the_step_in_flight() -> None:
    inst = make_instance()
    seq = Sequence(req(0, 10, 100))
    inst.admit(seq)
    plan = inst.plan(0.0)
    assert plan is not None
    inst.complete(plan.end_s)  # prefill
    plan = inst.plan(plan.end_s)
    assert plan is not None and plan.num_steps == 99
    mid = plan.end_of_step_s(10) + 1e-9  # inside step 11
    end = inst.truncate(mid)
    assert end == pytest.approx(plan.end_of_step_s(11))
    result = inst.complete(end)  # type: ignore[arg-type]
    assert result.finished == ()
    assert inst.generated_of(seq) == 1 + 12


def test_reservations_count_against_capacity_and_release() -> None:
    inst = make_instance(num_kv_blocks=10)
    assert inst.reserve(6)
    assert not inst.reserve(5)
    assert inst.free_blocks() == 4
    inst.release(6)
    assert inst.free_blocks() == 10
    with pytest.raises(InvariantError):
        inst.release(1)


def test_detach_requires_a_step_boundary() -> None:
    inst = make_instance()
    seq = Sequence(req(0, 10, 10))
    inst.admit(seq)
    assert inst.plan(0.0) is not None
    with pytest.raises(InvariantError):
        inst.detach(seq)


# ---- closed-form plans and preemption accounting, pinned by hand -------------------------------
def test_steps_done_by_counts_whole_steps_with_the_boundary_inclusive() -> None:
    # Steps last 1.0, 1.5, 2.0, 2.5 s: they end at 1.0, 2.5, 4.5 and 7.0.
    plan = StepPlan(start_s=0.0, first_step_s=1.0, slope_s=0.5, num_steps=4, num_decodes=1)
    assert [plan.end_of_step_s(j) for j in range(4)] == [1.0, 2.5, 4.5, 7.0]
    assert plan.end_s == 7.0
    expected = {0.0: 0, 0.99: 0, 1.0: 1, 2.49: 1, 2.5: 2, 4.5: 3, 6.99: 3, 7.0: 4, 100.0: 4}
    assert {t: plan.steps_done_by(t) for t in expected} == expected
    shifted = StepPlan(start_s=10.0, first_step_s=1.0, slope_s=0.0, num_steps=3, num_decodes=1)
    assert [shifted.steps_done_by(t) for t in (10.5, 11.0, 12.0, 13.0)] == [0, 1, 2, 3]


def _prefilling_with_a_migrated_decode(
    num_kv_blocks: int, decode_prompt: int
) -> tuple[Instance, Sequence, Sequence]:
    """A 600-token prompt half prefilled (256 tokens, 16 blocks), then a decoding request
    attached by KV migration after it: the latest admitted, so the first preemption victim."""
    inst = make_instance(num_kv_blocks=num_kv_blocks)
    a = Sequence(req(0, 600, 5))
    inst.admit(a)
    plan = inst.plan(0.0)
    assert plan is not None and plan.chunks == ((a, 256),)
    inst.complete(plan.end_s)
    c = Sequence(req(1, decode_prompt, 10))
    c.generated_tokens = 1  # its first token came from the instance it left
    c.last_token_s = 0.0
    blocks = -(-decode_prompt // 16)
    assert inst.reserve(blocks)
    inst.attach_decoding(c, blocks)
    return inst, a, c


def test_preempting_a_decode_that_needed_a_block_frees_that_block_too() -> None:
    # 32 blocks: a holds 16, c (32 tokens) 2 and needs a 3rd for its next token: 13 free.
    # a's next chunk (255 tokens: the budget less c's token) needs 16 more blocks: c is preempted,
    # which frees its 2 blocks and the 1 it no longer needs: 13 + 3 = 16, exactly enough.
    inst, a, c = _prefilling_with_a_migrated_decode(32, 32)
    plan = inst.plan(1.0)
    assert plan is not None and plan.chunks == ((a, 255),) and plan.num_decodes == 0
    assert c.state is SeqState.WAITING and c.preemptions == 1
    assert a.state is SeqState.PREFILL and a.preemptions == 0
    assert inst.num_preemptions == 1
    assert inst.free_blocks() == 0


def test_preempting_a_decode_that_needed_no_block_frees_only_its_blocks() -> None:
    # 31 blocks: a holds 16, c (33 tokens) 3 and needs no new one: 12 free. Preempting c frees
    # 3: 15 < 16, so a itself is preempted and nothing runs this step.
    inst, a, c = _prefilling_with_a_migrated_decode(31, 33)
    assert inst.plan(1.0) is None
    assert c.state is SeqState.WAITING and a.state is SeqState.WAITING
    assert inst.num_preemptions == 2
    assert inst.free_blocks() == 31
