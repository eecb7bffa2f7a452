"""vLLM v1 scheduling semantics of one instance, driven by hand with an injected clock."""

from __future__ import annotations

import pytest

from factories import make_instance, req, tiny_profile
from l4.errors import InvariantError, ValidationError
from l4.instance import Instance, InstanceConfig, SeqState, Sequence
from l4.instance.engine import StepPlan, StepResult
from l4.metrics import ItlRecorder


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


# ---- reservations, migrations and observation, by hand -------------------------------------------
def _decoding(inst: Instance, rid: int, prompt: int, output: int) -> Sequence:
    """Admit a request and run until it decodes (its prompt prefilled in one step)."""
    s = Sequence(req(rid, prompt, output))
    inst.admit(s)
    plan = inst.plan(0.0, 1)
    assert plan is not None
    inst.complete(plan.end_s)
    assert s.state is SeqState.DECODE
    return s


def test_a_reservation_counts_the_blocks_of_the_steps_in_flight() -> None:
    inst = make_instance(num_kv_blocks=10)
    _decoding(inst, 0, 20, 100)  # 20 tokens in KV: 2 blocks
    plan = inst.plan(1.0)
    assert plan is not None and plan.num_steps > 1
    # After the plan the request holds 20 + k tokens: what a reservation must leave room for.
    held = -(-(20 + plan.num_steps) // 16)
    room = 10 - held
    assert not inst.reserve(room + 1)
    assert inst.reserve(room)
    assert inst.free_blocks() == 10 - 2 - room  # now: 2 blocks held, the reservation taken


def test_reservations_hold_sequence_slots_too() -> None:
    inst = make_instance(num_kv_blocks=40, max_num_seqs=2)
    _decoding(inst, 0, 20, 100)
    assert inst.reserve(1)  # 1 running + 1 reserved slot = 2
    assert not inst.reserve(1)  # no slot left
    assert inst.reserve(1, slot=False)
    inst.release(1, slot=False)
    inst.release(1)
    with pytest.raises(InvariantError, match=r"^instance 0: releasing more than reserved$"):
        inst.release(0)  # no slot reserved any more


def test_a_reserved_slot_blocks_admission() -> None:
    inst = make_instance(num_kv_blocks=40, max_num_seqs=2)
    _decoding(inst, 0, 20, 100)
    assert inst.reserve(1)
    inst.admit(Sequence(req(1, 20, 5)))
    plan = inst.plan(1.0, 1)
    assert plan is not None and plan.chunks == ()  # the slot is promised to a migration


def test_attach_and_detach_move_a_decoding_request_with_its_counters() -> None:
    src, dst = make_instance(num_kv_blocks=40), make_instance(num_kv_blocks=40, instance_id=1)
    s = _decoding(src, 0, 40, 10)
    for _ in range(3):
        plan = src.plan(1.0, 1)
        assert plan is not None
        end = plan.end_s
        src.complete(end)
    assert src.generated_of(s) == 4 and src.length_of(s) == 44
    src.detach(s)
    assert s.state is SeqState.DETACHED and s.generated_tokens == 4 and s.blocks == 0
    assert s.computed_tokens == 0  # its KV stays behind until the copy lands
    assert s.resume_gap and s.last_token_s == end
    assert src.used_blocks() == 0 and not src.has_work
    assert dst.reserve(3)
    dst.attach_decoding(s, 3)
    assert s.instances == [0, 1] and s.state is SeqState.DECODE
    assert dst.length_of(s) == 44 and dst.used_blocks() == 3  # 43 tokens in KV
    assert dst.decode_length_stats() == (1, 44, 44)


def test_attach_needs_a_step_boundary_and_enough_reserved_room() -> None:
    inst = make_instance(num_kv_blocks=2)
    s = Sequence(req(0, 40, 10))
    s.generated_tokens = 1
    assert inst.reserve(1)
    with pytest.raises(InvariantError, match=r"^instance 0: KV over-allocated by attach$"):
        inst.attach_decoding(s, 1)  # its 40 tokens need 3 blocks of the 2 there are
    busy = make_instance(num_kv_blocks=40)
    _decoding(busy, 0, 20, 10)
    assert busy.plan(1.0) is not None
    with pytest.raises(InvariantError, match=r"^instance 0: attach while a step is in flight$"):
        busy.attach_decoding(Sequence(req(1, 5, 5)), 0)
    with pytest.raises(InvariantError, match=r"^instance 0: plan while a step is in flight$"):
        busy.plan(1.0)


def test_detaching_a_queued_request_updates_the_queue_sums() -> None:
    inst = make_instance()
    a, b = Sequence(req(0, 40, 5)), Sequence(req(1, 100, 5))
    inst.admit(a)
    inst.admit(b)
    assert inst.waiting_demand_blocks() == 3 + 7
    assert inst.pending_prefill() == (140, (40 * 40 + 100 * 100) / 2)
    inst.detach(a)
    assert a.state is SeqState.DETACHED and not a.resume_gap
    assert inst.waiting() == [b] and inst.num_waiting == 1
    assert inst.waiting_demand_blocks() == 7
    assert inst.pending_prefill() == (100, 100 * 100 / 2)
    inst.check_counters()


def test_pending_prefill_counts_the_unfinished_chunks() -> None:
    inst = make_instance()  # budget 256
    inst.admit(Sequence(req(0, 600, 5)))
    plan = inst.plan(0.0, 1)
    assert plan is not None
    inst.complete(plan.end_s)
    # 344 tokens left after 256 computed: pairs 344 x (256 + 344 / 2).
    assert inst.pending_prefill() == (344, 344 * (256 + 172))
    assert inst.num_running == 1 and inst.num_waiting == 0


def test_the_demand_of_a_prefill_under_way_is_what_its_later_chunks_will_allocate() -> None:
    # Blocks of 16 tokens: the prompt of 600 needs 38 and holds 16 after its first chunk (256).
    inst = make_instance()
    n = inst.config.num_kv_blocks
    inst.admit(Sequence(req(0, 600, 5)))
    assert inst.waiting_demand_blocks() == 38
    plan = inst.plan(0.0, 1)
    assert plan is not None
    inst.complete(plan.end_s)
    assert inst.used_blocks() == 16 and inst.waiting_demand_blocks() == 38 - 16
    # What a router sees as room is the same before and during the prefill (as the gateway,
    # which holds a started prompt's blocks as used, sees it).
    assert inst.free_blocks() - inst.waiting_demand_blocks() == n - 38
    for _ in range(2):  # the other two chunks: 256 + 88 tokens
        plan = inst.plan(plan.end_s, 1)
        assert plan is not None
        inst.complete(plan.end_s)
    assert inst.waiting_demand_blocks() == 0 and inst.used_blocks() >= 38


def test_drifted_queue_sums_are_an_invariant_error() -> None:
    inst = make_instance()
    inst.admit(Sequence(req(0, 40, 5)))
    inst.check_counters()
    inst._wait_tokens += 1
    with pytest.raises(InvariantError, match=r"^instance 0: waiting-queue sums drifted$"):
        inst.check_counters()


def test_complete_without_a_plan_is_an_invariant_error() -> None:
    inst = make_instance()
    with pytest.raises(InvariantError, match=r"^instance 0: complete\(\) with no step in flight$"):
        inst.complete(0.0)
    assert inst.truncate(0.0) is None and inst.plan(0.0) is None


def test_counters_of_a_lone_request() -> None:
    inst = make_instance()
    s = Sequence(req(0, 20, 5))
    drive(inst, [s])
    # One prefill step (its first token), then 4 decode steps.
    assert inst.steps_run == 5
    assert inst.output_tokens == 5 and inst.released_tokens == 25
    assert inst.busy_s == pytest.approx(s.finish_s)
    assert s.remaining_tokens == 0 and s.request_id == 0
    assert repr(s) == "Sequence(id=0, state=finished, gen=5/5, computed=24)"


def test_advance_commits_only_whole_steps() -> None:
    inst = make_instance()
    s = _decoding(inst, 0, 20, 50)
    plan = inst.plan(1.0)
    assert plan is not None and plan.num_steps == 49
    inst.advance(plan.end_of_step_s(0) - 1e-12)  # inside step 1: nothing committed
    assert inst.generated_of(s) == 1 and inst.plan_in_flight == plan
    inst.advance(plan.end_of_step_s(9))  # ten steps done
    assert inst.generated_of(s) == 11
    rest = inst.plan_in_flight
    assert rest is not None and rest.num_steps == 39
    assert rest.start_s == pytest.approx(plan.end_of_step_s(9))
    assert rest.first_step_s == pytest.approx(plan.first_step_s + 10 * plan.slope_s)
    assert rest.end_s == pytest.approx(plan.end_s)
    inst.advance(plan.end_s + 1.0)  # never past the last step: complete() emits it
    last = inst.plan_in_flight
    assert last is not None and last.num_steps == 1
    inst.complete(last.end_s)
    assert s.state is SeqState.FINISHED and s.finish_s == pytest.approx(plan.end_s)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_num_seqs": 0}, "--max-num-seqs must be >= 1, got 0"),
        ({"max_num_batched_tokens": 0}, "--max-num-batched-tokens must be >= 1, got 0"),
        ({"num_kv_blocks": 0}, "the KV cache must hold at least one block"),
    ],
)
def test_instance_config_validation(overrides: dict[str, int], message: str) -> None:
    base = {"max_num_seqs": 1, "max_num_batched_tokens": 1, "num_kv_blocks": 1}
    with pytest.raises(ValidationError, match=f"^{message}$"):
        InstanceConfig(**{**base, **overrides})
    assert InstanceConfig(**base).kv_capacity_tokens == 16


def test_instance_config_from_a_profile() -> None:
    profile = tiny_profile(kv_capacity_tokens=4096, max_context_tokens=2048)
    cfg = InstanceConfig.from_profile(profile)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens) == (16, 256)
    assert (cfg.num_kv_blocks, cfg.block_size_tokens) == (256, 16)
    cfg = InstanceConfig.from_profile(profile, max_num_seqs=3, max_num_batched_tokens=64)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens) == (3, 64)
    assert InstanceConfig.from_profile(tiny_profile(kv_capacity_tokens=2048)).num_kv_blocks == 128
    small = tiny_profile(kv_capacity_tokens=1024, max_context_tokens=2048)
    with pytest.raises(ValidationError, match=r"^the KV cache \(1024 tokens\) is smaller than"):
        InstanceConfig.from_profile(small)


def test_an_idle_instance_reports_no_decodes() -> None:
    inst = make_instance()
    assert inst.decode_length_stats() == (0, 0, 0)
    assert inst.pending_prefill() == (0, 0.0) and inst.kv_usage == 0.0


def test_the_decode_set_lists_its_members_in_order() -> None:
    inst = make_instance()
    a, b = _decoding(inst, 0, 20, 50), _decoding(inst, 1, 30, 50)
    assert inst._decode.members() == [a, b]
    # a decoded one step while b prefilled: contexts 22 and 31.
    assert inst.decode_length_stats() == (2, 22 + 31, 31)


def test_a_new_sequence_is_detached_and_holds_nothing() -> None:
    s = Sequence(req(3, 10, 5))
    assert s.state is SeqState.DETACHED and s.blocks == 0 and s.migrations == 0
    assert s.generated_tokens == s.computed_tokens == s.preemptions == 0
    assert s.first_token_s is None and s.instances == [] and not s.resume_gap


def _migrated_in(inst: Instance, rid: int, prompt: int, generated: int, last_s: float) -> Sequence:
    s = Sequence(req(rid, prompt, 100))
    s.generated_tokens = generated
    s.last_token_s = last_s
    blocks = -(-(prompt + generated - 1) // 16)
    assert inst.reserve(blocks)
    inst.attach_decoding(s, blocks)
    return s


def test_decodes_that_use_the_whole_budget_leave_no_chunk() -> None:
    # Budget 2 tokens: two decodes take both; the prompt being prefilled waits (no empty chunk).
    inst = make_instance(max_num_batched_tokens=2)
    c = Sequence(req(0, 100, 5))
    inst.admit(c)
    plan = inst.plan(0.0, 1)
    assert plan is not None and plan.chunks == ((c, 2),)
    inst.complete(plan.end_s)
    _migrated_in(inst, 1, 20, 1, plan.end_s)
    _migrated_in(inst, 2, 20, 1, plan.end_s)
    plan = inst.plan(plan.end_s, 1)
    assert plan is not None and plan.chunks == () and plan.num_decodes == 2


def test_requests_finishing_in_one_step_come_out_in_admission_order() -> None:
    inst = make_instance()
    seqs = [Sequence(req(i, 10, 3)) for i in (5, 3, 9)]
    results = drive(inst, seqs)
    assert list(results[-1].finished) == seqs


def test_gaps_of_migrated_requests_and_runs_of_the_others_reach_the_sink() -> None:
    itl = ItlRecorder()
    inst = make_instance()
    inst._sink = itl
    d = _decoding(inst, 0, 20, 100)
    start = d.last_token_s
    assert start is not None
    itl.__init__()  # type: ignore[misc]  # keep only what follows
    m = _migrated_in(inst, 1, 40, 5, start - 0.5)  # its last token came 0.5 s earlier elsewhere
    plan = inst.plan(start)
    assert plan is not None and plan.num_steps > 2 and plan.num_decodes == 2
    inst.complete(plan.end_s)
    values, weights = itl.samples()
    first_end = plan.end_of_step_s(0)
    k = plan.num_steps
    # d: its first step alone (1 gap), then both for the remaining k - 1 steps; m: one gap across
    # the migration, from its last token elsewhere to the end of its first step here.
    expected = [(plan.first_step_s, 1)]
    expected += [(plan.first_step_s + j * plan.slope_s, 2) for j in range(1, k)]
    expected += [(first_end - (start - 0.5), 1)]
    assert len(values) == len(expected)
    for (v, w), (ev, ew) in zip(zip(values, weights, strict=True), expected, strict=True):
        assert v == pytest.approx(ev, rel=1e-12) and w == ew
    assert m.state is SeqState.FINISHED and m.finish_s == plan.end_s  # the plan ran to it
